// openid-client (v6, https://github.com/panva/openid-client) against a live codeflow, with
// the two grants of issue 18 that it implements:
//   mode "device": initiateDeviceAuthorization (RFC 8628 §3.1) -> [browser: the /device
//     page with verification_uri_complete, login, allow] -> pollDeviceAuthorizationGrant
//     (§3.4, §3.5: waits the interval, handles authorization_pending / slow_down; validates
//     the ID token) -> fetchUserInfo -> refreshTokenGrant;
//   mode "par": buildAuthorizationUrlWithPAR (RFC 9126 §2: the library pushes the
//     request, authenticating the client, and builds the client_id + request_uri URL) ->
//     [browser: login, consent] -> authorizationCodeGrant (state, PKCE, nonce, ID token).
//
// Config (JSON on argv[2] or stdin): {mode, issuer, client_id, client_secret (null for a
// public client), redirect_uri (par), username, password}.
// Prints one JSON line: {ok: true, ...} or {ok: false, error, ...} (exit status 1).

import { createRequire } from 'node:module'
import * as client from 'openid-client'
import { approveDevice, describeError, readConfig, report, signInAndApprove } from './browser.mjs'

const { version } = createRequire(import.meta.url)('openid-client/package.json')

async function device(oidc, config) {
  const started = await client.initiateDeviceAuthorization(oidc, {
    scope: 'openid profile offline_access',
  })
  // The user allows it in a browser while the library polls.
  const approved = approveDevice(started.verification_uri_complete, started.user_code, config)
  const tokens = await client.pollDeviceAuthorizationGrant(oidc, started)
  await approved
  const claims = tokens.claims()
  const userinfo = await client.fetchUserInfo(oidc, tokens.access_token, claims.sub)
  const refreshed = await client.refreshTokenGrant(oidc, tokens.refresh_token)
  return {
    user_code: started.user_code,
    verification_uri: started.verification_uri,
    interval: started.interval,
    expires_in: started.expires_in,
    sub: claims.sub,
    id_token_claims: claims,
    granted_scope: tokens.scope ?? null,
    userinfo,
    refreshed: !!refreshed.access_token && refreshed.refresh_token !== tokens.refresh_token,
  }
}

async function par(oidc, config) {
  const codeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const authorizationUrl = await client.buildAuthorizationUrlWithPAR(oidc, {
    redirect_uri: config.redirect_uri,
    scope: 'openid profile',
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })
  const sent = [...authorizationUrl.searchParams.keys()].sort()
  const callbackUrl = await signInAndApprove(authorizationUrl, config)
  const tokens = await client.authorizationCodeGrant(oidc, callbackUrl, {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  })
  return {
    authorization_url_params: sent,
    request_uri_prefix: authorizationUrl.searchParams.get('request_uri').split(':').slice(0, 5).join(':'),
    sub: tokens.claims().sub,
    granted_scope: tokens.scope ?? null,
  }
}

async function main() {
  const config = readConfig()
  const secret = config.client_secret ?? undefined
  const oidc = await client.discovery(
    new URL(config.issuer),
    config.client_id,
    { client_secret: secret },
    secret === undefined ? client.None() : client.ClientSecretBasic(secret),
    // Loopback http in a test; the ID token's signature checked against the JWKS.
    { execute: [client.allowInsecureRequests, client.enableNonRepudiationChecks] },
  )
  const result = config.mode === 'device' ? await device(oidc, config) : await par(oidc, config)
  report({ ok: true, library: `openid-client@${version}`, mode: config.mode, ...result })
}

main().catch((e) => report(describeError(e)))
