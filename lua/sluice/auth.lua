-- sluice.auth: where a bearer token comes from, and what to answer when it
-- is missing or bad.
--
--   auth.token(req, opts) -> token, source | nil, "no_token"
--     opts.from    ordered list of accepted sources, default {"header"}:
--                  "header"  Authorization: Bearer <token> (scheme matched
--                            case-insensitively, RFC 6750 section 2.1)
--                  "cookie"  req.cookies[opts.cookie]  (default "access_token")
--                  "query"   req.query[opts.query]     (default "access_token")
--                  The first source that yields a token wins; a source that is
--                  present but unusable (e.g. "Authorization: Basic ...") is
--                  skipped, not an error.  EventSource cannot set headers, so
--                  browser routes typically use {"cookie"} or {"header",
--                  "query"}; a query token ends up in access logs and
--                  browser history, prefer short-lived tokens there.
--     opts.header  header name, default "authorization".
--     Tokens must be RFC 6750 b64token characters (A-Z a-z 0-9 - . _ ~ + /
--     then optional '='), which every JWT is; anything else is ignored.
--     A header given as several values (a table) is ambiguous and ignored.
--
--   auth.jwt(req, opts) -> claims, source | nil, reason
--     auth.token(req, opts) then sluice.jwt.verify(token, opts); opts is
--     passed through unchanged (algs, secret, public_key, iss, aud, ...).
--     reason is "no_token" or a sluice.jwt reason: log it, don't send it.
--
--   auth.challenge(opts) -> WWW-Authenticate header value for a 401
--     opts.realm   default "sluice"
--     opts.reason  the reason from auth.jwt: "no_token" (or nil) gives a bare
--                  challenge with no error code (RFC 6750 section 3.1); any
--                  other reason gives error="invalid_token".  The detailed
--                  reason is never included.
--     opts.error   explicit RFC 6750 error code: "invalid_request",
--                  "invalid_token" or "insufficient_scope" (overrides reason)
--     opts.scope   optional scope string
--     e.g.  Bearer realm="sluice", error="invalid_token"
--   auth.status(opts) -> the HTTP status matching auth.challenge(opts):
--     400 invalid_request, 403 insufficient_scope, 401 otherwise.

local jwt = require "sluice.jwt"

local type, ipairs, find, match = type, ipairs, string.find, string.match

local M = {}

local DEFAULT_FROM = { "header" }
local B64TOKEN = "^[%w%-%._~%+/]+=*$"

local function valid(tok)
  return type(tok) == "string" and find(tok, B64TOKEN) ~= nil and tok or nil
end

local function from_header(req, opts)
  local h = req.headers
  if not h then return nil end
  local v = h[opts.header or "authorization"]
  if type(v) ~= "string" then return nil end
  local scheme, tok = match(v, "^%s*(%a+) +(%S+)%s*$")
  if not scheme or scheme:lower() ~= "bearer" then return nil end
  return valid(tok)
end

local function from_cookie(req, opts)
  local c = req.cookies
  return c and valid(c[opts.cookie or "access_token"]) or nil
end

local function from_query(req, opts)
  local q = req.query
  return q and valid(q[opts.query or "access_token"]) or nil
end

local SOURCES = { header = from_header, cookie = from_cookie, query = from_query }

function M.token(req, opts)
  if type(req) ~= "table" then error("sluice.auth.token(req, opts): req must be a request table", 2) end
  opts = opts or {}
  local from = opts.from or DEFAULT_FROM
  if type(from) == "string" then from = { from } end
  for _, src in ipairs(from) do
    local f = SOURCES[src]
    if not f then
      error("sluice.auth: unknown token source '" .. tostring(src) .. "' (use header, cookie or query)", 2)
    end
    local tok = f(req, opts)
    if tok then return tok, src end
  end
  return nil, "no_token"
end

function M.jwt(req, opts)
  if type(opts) ~= "table" then error("sluice.auth.jwt(req, opts): opts table required (algs, secret/public_key)", 2) end
  local tok, src = M.token(req, opts)
  if not tok then return nil, src end
  local claims, reason = jwt.verify(tok, opts)
  if not claims then return nil, reason end
  return claims, src
end

local ERRORS = { invalid_request = 400, invalid_token = 401, insufficient_scope = 403 }

local function quote(s, what)
  if type(s) ~= "string" or find(s, "[%z\1-\31\127]") then
    error("sluice.auth.challenge: " .. what .. " must be a printable string", 3)
  end
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local function error_code(opts)
  local code = opts.error
  if code ~= nil then
    if not ERRORS[code] then
      error("sluice.auth.challenge: unknown error code '" .. tostring(code) .. "'", 3)
    end
    return code
  end
  local reason = opts.reason
  if reason == nil or reason == "no_token" then return nil end
  return "invalid_token"
end

function M.challenge(opts)
  opts = opts or {}
  local parts = { "Bearer realm=" .. quote(opts.realm or "sluice", "realm") }
  local code = error_code(opts)
  if code then parts[#parts + 1] = 'error="' .. code .. '"' end
  if opts.scope ~= nil then parts[#parts + 1] = "scope=" .. quote(opts.scope, "scope") end
  return table.concat(parts, ", ")
end

function M.status(opts)
  local code = error_code(opts or {})
  return code and ERRORS[code] or 401
end

return M
