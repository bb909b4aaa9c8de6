// openid-client (v6) runs a DPoP-bound authorization code flow (RFC 9449) against a live
// codeflow, with refresh, and authenticates with private_key_jwt (RFC 7523 §2.2) when
// the config gives it a private key. The library makes the DPoP proofs (getDPoPHandle with
// randomDPoPKeyPair) and retries on its own when the server asks for a nonce (§8, §9).
//
// Config (JSON on argv[2] or stdin):
//   {issuer, client_id, redirect_uri, username, password,
//    private_jwk (a private JWK with kid and alg, or null for a public client)}
// Prints one JSON line: {ok: true, ...} or {ok: false, error, ...} (exit status 1).

import { createRequire } from 'node:module'
import * as client from 'openid-client'
import { describeError, readConfig, report, signInAndApprove } from './browser.mjs'

const { version } = createRequire(import.meta.url)('openid-client/package.json')

async function clientAuthOf(config) {
  if (!config.private_jwk) return [client.None(), 'none']
  const { kid, alg, ...jwk } = config.private_jwk
  const params = alg === 'ES256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSA-PSS', hash: 'SHA-256' }
  const key = await crypto.subtle.importKey('jwk', jwk, params, false, ['sign'])
  return [client.PrivateKeyJwt({ key, kid }), 'private_key_jwt']
}

async function main() {
  const config = readConfig()
  const [clientAuth, method] = await clientAuthOf(config)
  const oidc = await client.discovery(new URL(config.issuer), config.client_id, {}, clientAuth, {
    // http://127.0.0.1 in a test; and without TLS, the ID token's signature is checked.
    execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks],
  })
  const keyPair = await client.randomDPoPKeyPair('ES256', { extractable: true })
  const DPoP = client.getDPoPHandle(oidc, keyPair)

  const codeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const authorizationUrl = client.buildAuthorizationUrl(oidc, {
    redirect_uri: config.redirect_uri,
    scope: 'openid profile offline_access',
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })
  const callbackUrl = await signInAndApprove(authorizationUrl, config)
  const tokens = await client.authorizationCodeGrant(oidc, callbackUrl, {
    pkceCodeVerifier: codeVerifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true,
  }, undefined, { DPoP })
  const claims = tokens.claims()
  const userinfo = await client.fetchUserInfo(oidc, tokens.access_token, claims.sub, { DPoP })
  const refreshed = await client.refreshTokenGrant(oidc, tokens.refresh_token, undefined, { DPoP })
  const userinfo2 = await client.fetchUserInfo(oidc, refreshed.access_token, claims.sub, { DPoP })

  report({
    ok: true,
    library: `openid-client@${version}`,
    client_auth: method,
    dpop_public_jwk: await crypto.subtle.exportKey('jwk', keyPair.publicKey),
    token_type: tokens.token_type,
    access_token: tokens.access_token,
    sub: claims.sub,
    userinfo_sub: userinfo.sub,
    refresh_token_type: refreshed.token_type,
    refreshed_access_token: refreshed.access_token,
    refresh_token_rotated: refreshed.refresh_token !== tokens.refresh_token,
    userinfo_after_refresh_sub: userinfo2.sub,
  })
}

main().catch((e) => report(describeError(e)))
