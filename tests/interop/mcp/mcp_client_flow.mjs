// An MCP client app on the official TypeScript SDK (@modelcontextprotocol/sdk), run by
// tests/test_mcp_interop_node.py against examples/mcp_server.py protected by a live codeflow.
//
// The SDK does the protocol: on the MCP server's 401 it reads the RFC 9728 metadata named
// in WWW-Authenticate, discovers the authorization server (RFC 8414 / OIDC Discovery), gets
// a client_id (a Client ID Metadata Document, RFC 7591 registration, or the pre-registered
// one given here), builds the authorization request (PKCE S256, resource), redeems the code
// (with resource), refreshes on a later 401 and asks for more scope on 403
// insufficient_scope. This app does what the SDK leaves to apps: it plays the user on
// codeflow's pages (../browser.mjs), checks the callback's state and RFC 9207 iss, and hands
// the code to transport.finishAuth.
//
// Protocol with the test: the first stdin line is the JSON config; the driver prints
// {"pause": "expire"} when the test should expire the access token and waits for a line;
// the last stdout line is the JSON result.

import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { UnauthorizedError, auth, extractWWWAuthenticateParams } from '@modelcontextprotocol/sdk/client/auth.js'
import { describeError, report, signInAndApprove } from '../browser.mjs'

const SDK = JSON.parse(
  readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8'),
)
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
const config = JSON.parse((await lines.next()).value)

/** Let the test act (expire the token), then go on. */
async function pause(what) {
  process.stdout.write(JSON.stringify({ pause: what }) + '\n')
  await lines.next()
}

/** The SDK's OAuthClientProvider: what an app keeps (client, tokens, verifier), in memory. */
class Provider {
  constructor() {
    this.client = config.client_id ? { client_id: config.client_id } : undefined
    this.authorizations = [] // the authorization URLs the SDK built
    this.callbacks = [] // {state_ok, iss}: what this app checked
    this.saved = [] // the client_ids the SDK saved (registered, or bound to the issuer)
  }
  get redirectUrl() {
    return config.redirect_uri
  }
  get clientMetadata() {
    return {
      client_name: 'MCP interop (TypeScript SDK)',
      redirect_uris: [config.redirect_uri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    }
  }
  get clientMetadataUrl() {
    return config.client_metadata_url
  }
  state() {
    this.expectedState = crypto.randomUUID()
    return this.expectedState
  }
  clientInformation() {
    return this.client
  }
  saveClientInformation(info) {
    this.client = info
    this.saved.push(info.client_id)
  }
  tokens() {
    return this.savedTokens
  }
  saveTokens(tokens) {
    this.savedTokens = tokens
  }
  saveCodeVerifier(verifier) {
    this.verifier = verifier
  }
  codeVerifier() {
    return this.verifier
  }
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this.client = undefined
    if (scope === 'all' || scope === 'tokens') this.savedTokens = undefined
  }
  async redirectToAuthorization(url) {
    this.authorizations.push(url.href)
    const callback = await signInAndApprove(url, config)
    // RFC 6749 §10.12 and RFC 9207 §2.4: the app checks state and iss before using the code.
    const state = callback.searchParams.get('state')
    const iss = callback.searchParams.get('iss')
    this.callbacks.push({ state_ok: state === this.expectedState, iss })
    if (state !== this.expectedState) throw new Error(`state mismatch in ${callback}`)
    if (iss !== config.issuer) throw new Error(`iss ${iss} is not ${config.issuer}`)
    this.code = callback.searchParams.get('code')
    if (!this.code) throw new Error(`no code in ${callback}`)
  }
}

const provider = new Provider()
const result = { library: `@modelcontextprotocol/sdk@${SDK.version}`, ok: false }
let forbidden // the last 403 the MCP server answered, for the step-up below

/** fetch, remembering the last 403 (the SDK reads the same response). */
async function recordingFetch(url, init) {
  const response = await fetch(url, init)
  if (response.status === 403) forbidden = response.clone()
  return response
}

async function connect() {
  for (let attempt = 0; ; attempt++) {
    const transport = new StreamableHTTPClientTransport(new URL(config.url), {
      authProvider: provider,
      fetch: recordingFetch,
    })
    const client = new Client({ name: 'codeflow-interop', version: '1.0.0' })
    try {
      await client.connect(transport)
      return { client, transport }
    } catch (e) {
      if (!(e instanceof UnauthorizedError) || attempt > 0) throw e
      await transport.finishAuth(provider.code) // the SDK redeems the code
    }
  }
}

/**
 * Call a tool; when the SDK stopped for the user (a new authorization), finish and retry.
 *
 * Step-up: on 403 insufficient_scope the SDK (1.32.2) runs auth(), which refreshes when it
 * holds a refresh token; a refresh keeps the granted scope (RFC 6749 §6), so the retry gets
 * the same 403 and the SDK gives up ("Server returned 403 after trying upscoping"). The app
 * then does what the SDK meant to: it drops the tokens and runs the SDK's auth() with the
 * challenge's scope, which starts a new authorization.
 */
async function call(session, name, args = {}) {
  const attempt = async () => (await session.client.callTool({ name, arguments: args })).structuredContent
  try {
    return await attempt()
  } catch (e) {
    if (e instanceof StreamableHTTPError && e.code === 403 && forbidden) {
      const { scope, error, resourceMetadataUrl } = extractWWWAuthenticateParams(forbidden)
      if (error !== 'insufficient_scope') throw e
      result.sdk_step_up_gave_up = String(e)
      provider.invalidateCredentials('tokens')
      const outcome = await auth(provider, { serverUrl: config.url, scope, resourceMetadataUrl, fetchFn: recordingFetch })
      if (outcome !== 'REDIRECT') throw new Error(`auth() answered ${outcome}`, { cause: e })
    } else if (!(e instanceof UnauthorizedError)) {
      throw e
    }
    await session.transport.finishAuth(provider.code)
    return await attempt()
  }
}

try {
  const session = await connect()
  result.first = await call(session, 'whoami')
  await pause('expire')
  result.refreshed = await call(session, 'whoami')
  result.note = await call(session, 'add_note', { text: 'from the TypeScript SDK' })
  result.stepped_up = await call(session, 'whoami')
  await session.client.close()
  result.ok = true
} catch (e) {
  Object.assign(result, describeError(e))
} finally {
  Object.assign(result, {
    authorizations: provider.authorizations,
    callbacks: provider.callbacks,
    saved_clients: provider.saved,
    client_id: provider.client?.client_id,
    access_token: provider.savedTokens?.access_token,
  })
  report(result)
  process.exit()
}
