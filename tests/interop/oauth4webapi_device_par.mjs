// oauth4webapi (v3, https://github.com/panva/oauth4webapi) against a live codeflow, one
// low-level step at a time, with the two grants of issue 18:
//   mode "device": deviceAuthorizationRequest/processDeviceAuthorizationResponse (RFC 8628
//     §3.1, §3.2) -> two polls at once (authorization_pending, then slow_down: §3.5) ->
//     [browser: /device, login, allow] -> polls every interval + 5 s until
//     processDeviceCodeResponse gives the tokens (ID token claims) -> userinfo;
//   mode "par": pushedAuthorizationRequest/processPushedAuthorizationResponse (RFC 9126
//     §2) -> authorization URL with client_id + request_uri only -> [browser: login,
//     consent] -> validateAuthResponse (state, iss) -> authorization code grant.
//
// Config (JSON on argv[2] or stdin): {mode, issuer, client_id, client_secret (null for a
// public client), redirect_uri (par), username, password}.
// Prints one JSON line: {ok: true, ...} or {ok: false, error, ...} (exit status 1).

import { createRequire } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'
import * as oauth from 'oauth4webapi'
import { approveDevice, describeError, readConfig, report, signInAndApprove } from './browser.mjs'

const { version } = createRequire(import.meta.url)('oauth4webapi/package.json')
const http = { [oauth.allowInsecureRequests]: true } // loopback http, in a test

/** One poll: the tokens, or the RFC 8628 §3.5 error code the library parsed. */
async function poll(as, c, clientAuth, deviceCode) {
  const response = await oauth.deviceCodeGrantRequest(as, c, clientAuth, deviceCode, http)
  try {
    return { tokens: await oauth.processDeviceCodeResponse(as, c, response) }
  } catch (e) {
    if (e instanceof oauth.ResponseBodyError) return { error: e.error }
    throw e
  }
}

async function device(as, c, clientAuth, config) {
  const response = await oauth.deviceAuthorizationRequest(as, c, clientAuth,
    { scope: 'openid profile offline_access' }, http)
  const started = await oauth.processDeviceAuthorizationResponse(as, c, response)
  const errors = [(await poll(as, c, clientAuth, started.device_code)).error]
  errors.push((await poll(as, c, clientAuth, started.device_code)).error)
  let interval = (started.interval ?? 5) + (errors[1] === 'slow_down' ? 5 : 0)
  await approveDevice(started.verification_uri_complete, started.user_code, config)
  let tokens
  for (let i = 0; i < 5 && !tokens; i++) {
    await sleep(interval * 1000)
    const result = await poll(as, c, clientAuth, started.device_code)
    if (result.error === 'slow_down') interval += 5
    else if (result.error && result.error !== 'authorization_pending') throw new Error(result.error)
    tokens = result.tokens
  }
  const claims = oauth.getValidatedIdTokenClaims(tokens)
  const userinfoResponse = await oauth.userInfoRequest(as, c, tokens.access_token, http)
  const userinfo = await oauth.processUserInfoResponse(as, c, claims.sub, userinfoResponse)
  const replay = await poll(as, c, clientAuth, started.device_code)
  return {
    first_errors: errors,
    user_code: started.user_code,
    sub: claims.sub,
    id_token_claims: claims,
    granted_scope: tokens.scope ?? null,
    refresh_token: !!tokens.refresh_token,
    userinfo,
    replay_error: replay.error ?? null,
  }
}

async function par(as, c, clientAuth, config) {
  const codeVerifier = oauth.generateRandomCodeVerifier()
  const state = oauth.generateRandomState()
  const nonce = oauth.generateRandomNonce()
  const response = await oauth.pushedAuthorizationRequest(as, c, clientAuth, {
    response_type: 'code',
    redirect_uri: config.redirect_uri,
    scope: 'openid profile',
    code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  }, http)
  const pushed = await oauth.processPushedAuthorizationResponse(as, c, response)
  const authorizationUrl = new URL(as.authorization_endpoint)
  authorizationUrl.searchParams.set('client_id', c.client_id)
  authorizationUrl.searchParams.set('request_uri', pushed.request_uri)
  const callbackUrl = await signInAndApprove(authorizationUrl, config)
  const params = oauth.validateAuthResponse(as, c, callbackUrl, state)
  const tokenResponse = await oauth.authorizationCodeGrantRequest(
    as, c, clientAuth, params, config.redirect_uri, codeVerifier, http)
  const tokens = await oauth.processAuthorizationCodeResponse(as, c, tokenResponse, {
    expectedNonce: nonce,
    requireIdToken: true,
  })
  return {
    expires_in: pushed.expires_in,
    request_uri_prefix: pushed.request_uri.split(':').slice(0, 5).join(':'),
    sub: oauth.getValidatedIdTokenClaims(tokens).sub,
    granted_scope: tokens.scope ?? null,
  }
}

async function main() {
  const config = readConfig()
  const secret = config.client_secret ?? undefined
  const issuer = new URL(config.issuer)
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, http))
  const c = { client_id: config.client_id }
  const clientAuth = secret === undefined ? oauth.None() : oauth.ClientSecretBasic(secret)
  const result = config.mode === 'device'
    ? await device(as, c, clientAuth, config)
    : await par(as, c, clientAuth, config)
  report({ ok: true, library: `oauth4webapi@${version}`, mode: config.mode, ...result })
}

main().catch((e) => report(describeError(e)))
