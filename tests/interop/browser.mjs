// The user's side of the flow, shared by the driver scripts: read the config, then act
// as a browser (fetch with manual redirects and a small cookie jar) through codeflow's
// login and consent pages until the authorization server redirects to the client's
// redirect_uri. Nothing listens at the redirect_uri: that final Location is the
// callback URL, handed to the client library under test.
//
// Nothing here checks the protocol: that is the client libraries' job.

import { readFileSync } from 'node:fs'

/** The JSON config from argv[2], or else from stdin. */
export function readConfig() {
  const raw = process.argv[2] ?? readFileSync(0, 'utf8')
  const config = JSON.parse(raw)
  for (const key of ['issuer', 'client_id', 'redirect_uri', 'username', 'password']) {
    if (typeof config[key] !== 'string') throw new TypeError(`config.${key} must be a string`)
  }
  return config
}

/** Print one JSON line and set the exit status: 0 for ok, 1 otherwise. */
export function report(result) {
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exitCode = result.ok ? 0 : 1
}

/** An error as a JSON-able object: message, the library's codes, and its causes. */
export function describeError(e) {
  const out = { ok: false, error: String(e), messages: [], ...errorDetails(e, 0) }
  for (let c = e, i = 0; c instanceof Error && i < 5; c = c.cause, i++) out.messages.push(String(c))
  if (e?.stack) out.stack = e.stack
  return out
}

/** JSON for a non-Error cause (claims, a header, a response), without key material. */
function jsonable(_, v) {
  if (v instanceof Response) return `Response ${v.status}`
  if (ArrayBuffer.isView(v)) return `<${v.byteLength} bytes>`
  if (typeof CryptoKey !== 'undefined' && v instanceof CryptoKey) return `<CryptoKey ${v.algorithm?.name}>`
  return v
}

function errorDetails(e, depth) {
  if (!e || typeof e !== 'object' || depth > 4) return {}
  const out = {}
  for (const key of ['code', 'error', 'error_description', 'status']) {
    if (e[key] !== undefined && typeof e[key] !== 'object') out[key] = e[key]
  }
  if (e.cause instanceof Error) {
    out.cause = { message: String(e.cause), ...errorDetails(e.cause, depth + 1) }
  } else if (e.cause !== undefined) {
    try {
      out.cause = JSON.parse(JSON.stringify(e.cause, jsonable) ?? 'null')
    } catch {
      out.cause = String(e.cause)
    }
  }
  return out
}

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }

/** HTML character references: named (the few HTML escaping emits), decimal and hex. */
export function htmlUnescape(s) {
  return s.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (m, ref) => {
    if (ref[0] === '#') {
      const code = ref[1] === 'x' || ref[1] === 'X' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10)
      return String.fromCodePoint(code)
    }
    return ENTITIES[ref.toLowerCase()] ?? m
  })
}

/** The hidden inputs of a page (codeflow's forms carry csrf_token and request). */
export function hiddenFields(page) {
  const fields = {}
  for (const [, name, value] of page.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"/g)) {
    fields[htmlUnescape(name)] = htmlUnescape(value)
  }
  return fields
}

/** The action of the form on a page, resolved against the page's URL. */
function formAction(page, pageUrl) {
  const m = page.match(/<form[^>]*\saction="([^"]*)"/)
  if (!m) throw new Error(`no form on the page at ${pageUrl}: ${page.slice(0, 500)}`)
  return new URL(htmlUnescape(m[1]), pageUrl)
}

/** A browser for one origin: remembers cookies, never follows redirects by itself. */
export class Browser {
  constructor() {
    this.cookies = new Map()
  }

  async request(url, init = {}) {
    const headers = new Headers(init.headers)
    if (this.cookies.size) {
      headers.set('cookie', [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '))
    }
    const response = await fetch(url, { ...init, headers, redirect: 'manual' })
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';')
      const eq = pair.indexOf('=')
      const name = pair.slice(0, eq).trim()
      const value = pair.slice(eq + 1).trim()
      const gone = attributes.some((a) => /^\s*max-age\s*=\s*0\s*$/i.test(a))
      if (gone) this.cookies.delete(name)
      else this.cookies.set(name, value)
    }
    return response
  }

  async postForm(url, fields) {
    return this.request(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(fields).toString(),
    })
  }
}

async function expectPage(response, url, marker) {
  const page = await response.text()
  if (response.status !== 200 || !page.includes(marker)) {
    throw new Error(`expected a page with ${marker} from ${url}, got ${response.status}: ${page.slice(0, 500)}`)
  }
  return page
}

function expectRedirect(response, url) {
  const location = response.headers.get('location')
  if (![302, 303].includes(response.status) || !location) {
    throw new Error(`expected a redirect from ${url}, got ${response.status}`)
  }
  return new URL(location, url)
}

/**
 * Open ``url``, which shows the login page, sign in there, and return where the login's
 * 303 leads (back to the page that asked for it).
 */
async function signIn(browser, url, { username, password }) {
  const page = await expectPage(await browser.request(url), url, 'name="password"')
  const loginUrl = formAction(page, url)
  const response = await browser.postForm(loginUrl, { ...hiddenFields(page), username, password })
  if (response.status !== 303) {
    throw new Error(`login answered ${response.status}: ${(await response.text()).slice(0, 500)}`)
  }
  return expectRedirect(response, loginUrl)
}

/**
 * Sign in and approve, as a user would in a browser: authorization URL -> login page ->
 * POST login -> 303 back to authorize -> consent page -> POST consent (approve) -> 303
 * to the redirect_uri (or, with consent already on record, authorize redirects there at
 * once). Returns that callback URL.
 */
export async function signInAndApprove(authorizationUrl, credentials) {
  const browser = new Browser()
  const url = await signIn(browser, new URL(authorizationUrl), credentials)
  let response = await browser.request(url)
  if (response.status !== 200) {
    // Consent given earlier for these scopes: the server answers at once.
    return expectRedirect(response, url)
  }
  const page = await expectPage(response, url, 'name="decision"')
  const consentUrl = formAction(page, url)
  response = await browser.postForm(consentUrl, { ...hiddenFields(page), decision: 'approve' })
  if (response.status !== 303) {
    throw new Error(`consent answered ${response.status}: ${(await response.text()).slice(0, 500)}`)
  }
  return expectRedirect(response, consentUrl)
}

/** The protected header of a JWT (alg, kid, typ), for the report only. */
export function jwtHeader(token) {
  return JSON.parse(Buffer.from(token.split('.')[0], 'base64url').toString('utf8'))
}

/**
 * The user's side of the device flow (RFC 8628 §3.3, §3.3.1): open
 * verification_uri_complete (the user code prefilled), sign in, and allow the device on
 * the confirmation page, which must name the user code the device was given.
 */
export async function approveDevice(verificationUriComplete, userCode, credentials) {
  const browser = new Browser()
  const url = await signIn(browser, new URL(verificationUriComplete), credentials)
  let response = await browser.request(url)
  const page = await expectPage(response, url, 'name="decision"')
  if (!page.includes(userCode)) throw new Error(`the confirmation page does not show ${userCode}`)
  const decideUrl = formAction(page, url)
  response = await browser.postForm(decideUrl, { ...hiddenFields(page), decision: 'approve' })
  await expectPage(response, decideUrl, 'Device connected')
}
