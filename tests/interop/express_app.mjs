// A web app on express-openid-connect (pinned in package.json), configured as its README
// shows, with Back-Channel Logout on (its docs: `backchannelLogout` needs a store; this one
// is the smallest express-session-compatible store, in memory). tests/test_interop_express.py
// starts it as: node express_app.mjs <port> <issuer> <client_id> <client_secret>
// and waits for the line "listening".
import express from 'express';
import eoc from 'express-openid-connect';

const [port, issuer, clientID, clientSecret] = process.argv.slice(2);

// express-session's store interface (get, set, destroy with callbacks), kept in a Map.
const entries = new Map();
const store = {
  get: (key, cb) => cb(null, entries.get(key)),
  set: (key, value, cb) => { entries.set(key, value); cb(null); },
  destroy: (key, cb) => { entries.delete(key); cb(null); },
};

const app = express();
app.use(eoc.auth({
  issuerBaseURL: issuer,
  baseURL: `http://127.0.0.1:${port}`,
  clientID,
  clientSecret,
  secret: 'a long random string for the tests only, not a real one',
  authRequired: false,
  idpLogout: true, // the app's /logout ends the provider's session (RP-Initiated Logout)
  backchannelLogout: { store },
  authorizationParams: { response_type: 'code', scope: 'openid profile email' },
}));

app.get('/', (req, res) => {
  const who = req.oidc.isAuthenticated() ? `Hello, ${req.oidc.user.name}` : 'Signed out';
  res.type('html').send(`<!doctype html><title>express app</title><p id="who">${who}</p>`);
});

app.listen(Number(port), '127.0.0.1', () => console.log('listening'));
