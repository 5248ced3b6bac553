-- Pathological client input and every library parser that reads client
-- input, shared by spec/unit/pathological_input_spec.lua (a generous time
-- bound per call) and bench/pathological.lua (the time each call takes).
-- Not a spec itself (no "_spec" in the name). Needs the sluice library on
-- package.path.
local request = require "sluice.request"
local router = require "sluice.router"
local auth = require "sluice.auth"
local jwt = require "sluice.jwt"
local rollout = require "sluice.rollout"
local cors = require "sluice.cors"
local mask = require "sluice.mask"
local json = require "sluice.json"

local rep = string.rep

local KIB64 = 64 * 1024

-- unit repeated up to n bytes (default 64 KiB)
local function fill(unit, n)
  n = n or KIB64
  return rep(unit, math.floor(n / #unit))
end

-- head .. filler .. tail, 64 KiB in all
local function between(head, unit, tail)
  return head .. fill(unit, KIB64 - #head - #tail) .. tail
end

local inputs = {
  { "64 KiB of spaces", fill(" ") },
  { "a, 64 KiB of spaces, b", between("a", " ", "b") },
  { "k=a, spaces, b", between("k=a", " ", "b") },
  { "spaces, =, spaces, v", between("", " ", "=") .. fill(" ", 100) .. "v" },
  { "tabs and other blanks", fill(" \t\r\n\v\f") },
  { "a, tabs, b", between("a", "\t", "b") },
  { "64 KiB of =", fill("=") },
  { "64 KiB of ;", fill(";") },
  { "64 KiB of ,", fill(",") },
  { "64 KiB of &", fill("&") },
  { "a=; repeated", fill("a=;") },
  { " = ; repeated", fill(" = ; ") },
  { "a = b , repeated", fill("a = b , ") },
  { "a=b& repeated", fill("a=b&") },
  { '" repeated', fill('"') },
  { "\\ repeated", fill("\\") },
  { "[ repeated (deep nesting)", fill("[") },
  { "{\"a\": repeated (deep nesting)", fill('{"a":') },
  { "[ ] repeated", fill("[ ]") },
  { "[, blanks, no ]", "[" .. fill(" ", KIB64 - 1) },
  { "% repeated", fill("%") },
  { "%41 repeated", fill("%41") },
  { "+ repeated", fill("+") },
  { "/ repeated", fill("/") },
  { "/a repeated", fill("/a") },
  { ". repeated", fill(".") },
  { "a. repeated", fill("a.") },
  { "@ repeated", fill("@") },
  { "a@ repeated", fill("a@") },
  { ": repeated", fill(":") },
  { "[: repeated", "[" .. fill(":", KIB64 - 1) },
  { "https:// then a", between("https://", "a", "") },
  { "https://*. repeated", "https://" .. fill("*.", KIB64 - 8) },
  { "64 KiB of a", fill("a") },
  { "64 KiB of digits", fill("0123456789") },
  { "Bearer, blanks, token", between("Bearer", " ", "abc") },
  { "Bearer x, blanks, y", between("Bearer x", " ", "y") },
  { "Bearer, token, =, then x", between("Bearer A", "=", "x") },
  { "invalid UTF-8 \\xff\\xfe", fill("\255\254") },
  { "truncated UTF-8 \\xc3", fill("\195") },
  { "lone continuation bytes", fill("\128") },
  { "surrogates (CESU)", fill("\237\160\128") },
  { "full-width digits", fill("\239\188\145") },
  { "64 KiB of NUL", fill("\0") },
  { "a NUL repeated", fill("a\0") },
  { "NUL, blanks, NUL", between("\0", " ", "\0") },
}

local R = router.new()
R:add("GET", "/health", {})
R:add("GET", "/orders/:user", {})
R:add("POST", "/orders/:user/events", {})
R:add("GET", "/files/*path", {})

local SECRET = "pathological-secret-0123456789"
local AUTH = { algs = { "HS256" }, secret = SECRET, from = { "header", "cookie", "query" }, aud = false }
local LONG_JWT = { algs = { "HS256" }, secret = SECRET, max_length = 1024 * 1024 }

local ROLLOUT = rollout.new { header = "X-Traffic-Color", variants = { "stable", "green" },
                              split = { green = 10 }, salt = "s" }
local CORS = cors.new { origins = { "https://app.example.com", "*.example.com", "null" }, credentials = true }
local CORS_ANY = cors.new { origins = { "*" }, headers = { "*" }, credentials = true }

local MASK = mask.compile {
  { "phone", "phone" }, { "email", "email" }, { "id", "national_id" },
  { "items.*.card", "redact" }, { "user.id", { "hash", salt = "s", len = 16 } },
}

local function masker(name)
  return mask.compile { { "v", name } }
end
-- {"v": s}: encoded before the clock starts (NULs and controls grow
-- sixfold as \u0000 escapes; that is the JSON's size, not the masker's cost)
local function payload(s) return json.encode { v = s } end

local function req(headers, query_string)
  return request.new("GET", "/orders/42", query_string, headers, "", "127.0.0.1", {})
end

-- { name, run(x), prepare(s) -> x (optional, not timed) }: each parses s
-- the way a request (or a published payload) would make it.
local parsers = {
  { "request.parse_query", function(s) request.parse_query(s) end },
  { "request.parse_cookies", function(s) request.parse_cookies(s) end },
  { "request.url_decode", function(s) request.url_decode(s) end },
  { "req.query / req.cookies / headers", function(s)
      local r = req({ cookie = s, ["x-any"] = s }, s)
      local _ = r.query, r.cookies, r.headers["X-Any"]
    end },
  { "router.find (path as sent)", function(s) R:find("GET", s) end },
  { "router.find (under a :param)", function(p) R:find("POST", p) end,
    function(s) return "/orders/" .. s .. "/events" end },
  { "router.find (under a *splat)", function(p) R:find("GET", p) end,
    function(s) return "/files/" .. s end },
  { "auth.token (header, cookie, query)", function(s)
      auth.token(req({ authorization = s, cookie = s }, s), AUTH)
      auth.token(req({ authorization = "Bearer " .. s, cookie = "access_token=" .. s },
                     "access_token=" .. s), AUTH)
    end },
  { "auth.jwt (header, cookie, query)", function(s)
      auth.jwt(req({ authorization = "Bearer " .. s }), AUTH)
      auth.jwt(req({ cookie = "access_token=" .. s }), AUTH)
      auth.jwt(req({}, "access_token=" .. s), AUTH)
    end },
  { "jwt.verify (64 KiB allowed)", function(s)
      jwt.verify(s, LONG_JWT)
      jwt.verify(s .. "." .. s .. "." .. s, LONG_JWT)
      jwt.verify("eyJhbGciOiJIUzI1NiJ9." .. s .. ".c2ln", LONG_JWT)
    end },
  { "jwt.b64url_decode", function(s) jwt.b64url_decode(s) end },
  { "rollout:choose (header)", function(s)
      ROLLOUT:choose(req({ ["x-traffic-color"] = s }))
    end },
  { "rollout.bucket", function(s) rollout.bucket(s, s) end },
  { "cors allowed / headers", function(s)
      CORS:allowed(s)
      CORS:allowed("https://" .. s)
      CORS:headers(req({ origin = s }))
    end },
  { "cors preflight (Access-Control-Request-Headers)", function(s)
      local h = { origin = "https://app.example.com", ["access-control-request-method"] = "GET",
                  ["access-control-request-headers"] = s }
      CORS:preflight(req(h))
      CORS_ANY:preflight(req(h))
      CORS:preflight(req({ origin = s, ["access-control-request-method"] = s }))
    end },
  { "json.decode", function(s) json.decode(s) end },
  { "mask:apply (payload)", function(s) MASK:apply(s) end },
  { "mask phone", function(p) masker("phone"):apply(p) end, payload },
  { "mask email", function(p) masker("email"):apply(p) end, payload },
  { "mask national_id", function(p) masker("national_id"):apply(p) end, payload },
  { "mask hash", function(p) masker({ "hash", salt = "s" }):apply(p) end, payload },
}

return { inputs = inputs, parsers = parsers, KIB64 = KIB64 }
