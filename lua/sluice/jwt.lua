-- sluice.jwt: verification of JWS compact-serialised JWTs (RFC 7515/7519)
-- with OpenSSL's libcrypto through LuaJIT FFI (see sluice.crypto).
--
--   jwt.verify(token, opts) -> claims, header | nil, reason
--
-- opts (a table; a misconfigured opts raises a Lua error, a bad token never
-- does):
--   algs        REQUIRED list of the algorithms this route accepts, among
--               HS256 HS384 HS512 RS256 ES256.  The token header's `alg`
--               must be one of them; "none" can never be listed.
--   secret      HMAC key (string) for HS*.  A secret that looks like a PEM
--               block is refused: that is the RS256->HS256 key-confusion
--               mistake waiting to happen.
--   public_key  PEM text ("PUBLIC KEY" SubjectPublicKeyInfo or a
--               "CERTIFICATE") for RS256 (RSA >= 2048 bits) / ES256 (P-256).
--               Parsed once per distinct PEM text and cached.
--   leeway      seconds of clock skew tolerated for exp/nbf; default 0.
--   now         current time in seconds; default os.time().
--   iss         expected issuer: string or list of strings.  When set, the
--               token must carry a matching `iss`.
--   aud         expected audience: string or list of strings.  The token's
--               `aud` (string or array) must contain one of them.  When
--               opts.aud is nil and the token HAS an `aud`, the token is
--               refused ("wrong_audience"), as RFC 7519 section 4.1.3
--               requires; set opts.aud = false to accept any audience.
--   require     list of claim names that must be present (e.g. {"exp","sub"}).
--   max_length  longest token accepted, in bytes; default 8192.
--
-- Rules: the signature is checked before the payload is even decoded;
-- `exp` valid while now < exp + leeway (refused when exp <= now - leeway);
-- `nbf` refused when nbf > now + leeway; exp/nbf/iat that are present but
-- not numbers are refused; a `crit` header is refused (no extension is
-- understood); `typ` and `kid` are ignored; `iat` is not checked.
-- Signature / MAC comparisons are constant-time (CRYPTO_memcmp).
--
-- reason (for logs, never for the client):
--   malformed, too_long, alg_none, alg_not_allowed, unsupported_crit,
--   key_mismatch, bad_signature, invalid_claim, expired, not_yet_valid,
--   wrong_issuer, wrong_audience, missing_claim
--
--   jwt.sign(claims, { secret = "...", alg = "HS256", header = {kid = ...} })
--       -> token   (HS256/HS384/HS512 only: for tests, examples, internal
--                   tokens.  RS/ES signing belongs to an identity provider.)
--   jwt.check_opts(opts) -> true, or raises what verify() would raise on a
--       misconfigured opts (call it when a route is declared)
--   jwt.b64url_decode(s) -> raw | nil     (strict: no padding, no stray bits)
--   jwt.b64url_encode(raw) -> s

local ffi = require "ffi"
local bit = require "bit"
local crypto = require "sluice.crypto"
local cjson = require("cjson.safe").new()

local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift
local byte, sub, find, char = string.byte, string.sub, string.find, string.char
local type, tostring, ipairs = type, tostring, ipairs

local M = {}

local DEFAULT_MAX_LENGTH = 8192

---------------------------------------------------------------------------
-- base64url (RFC 4648 section 5), strict

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local DEC = ffi.new("int16_t[256]")
for i = 0, 255 do DEC[i] = -1 end
for i = 1, 64 do DEC[byte(ALPHABET, i)] = i - 1 end

local dbuf, dbuf_size = nil, 0

function M.b64url_decode(s)
  local n = #s
  if n % 4 == 1 then return nil end
  local outlen = rshift(n * 3, 2)
  if outlen > dbuf_size then
    dbuf_size = math.max(outlen, 1024)
    dbuf = ffi.new("uint8_t[?]", dbuf_size)
  end
  local p = ffi.cast("const uint8_t *", s)
  local o = 0
  local full = n - n % 4
  for i = 0, full - 1, 4 do
    local a, b, c, d = DEC[p[i]], DEC[p[i + 1]], DEC[p[i + 2]], DEC[p[i + 3]]
    if bor(a, b, c, d) < 0 then return nil end
    local v = bor(lshift(a, 18), lshift(b, 12), lshift(c, 6), d)
    dbuf[o] = rshift(v, 16)
    dbuf[o + 1] = band(rshift(v, 8), 0xff)
    dbuf[o + 2] = band(v, 0xff)
    o = o + 3
  end
  local rest = n - full
  if rest == 2 then
    local a, b = DEC[p[full]], DEC[p[full + 1]]
    if bor(a, b) < 0 or band(b, 0x0f) ~= 0 then return nil end
    dbuf[o] = bor(lshift(a, 2), rshift(b, 4))
    o = o + 1
  elseif rest == 3 then
    local a, b, c = DEC[p[full]], DEC[p[full + 1]], DEC[p[full + 2]]
    if bor(a, b, c) < 0 or band(c, 0x03) ~= 0 then return nil end
    local v = bor(lshift(a, 10), lshift(b, 4), rshift(c, 2))
    dbuf[o] = rshift(v, 8)
    dbuf[o + 1] = band(v, 0xff)
    o = o + 2
  end
  return ffi.string(dbuf, o)
end

function M.b64url_encode(s)
  local out, n = {}, #s
  for i = 1, n - 2, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = a * 65536 + b * 256 + c
    out[#out + 1] = char(byte(ALPHABET, rshift(v, 18) + 1), byte(ALPHABET, band(rshift(v, 12), 63) + 1),
                         byte(ALPHABET, band(rshift(v, 6), 63) + 1), byte(ALPHABET, band(v, 63) + 1))
  end
  local rest = n % 3
  if rest == 1 then
    local a = byte(s, n)
    out[#out + 1] = char(byte(ALPHABET, rshift(a, 2) + 1), byte(ALPHABET, band(lshift(a, 4), 63) + 1))
  elseif rest == 2 then
    local a, b = byte(s, n - 1, n)
    local v = a * 256 + b
    out[#out + 1] = char(byte(ALPHABET, rshift(v, 10) + 1), byte(ALPHABET, band(rshift(v, 4), 63) + 1),
                         byte(ALPHABET, band(lshift(v, 2), 63) + 1))
  end
  return table.concat(out)
end

local b64dec = M.b64url_decode

---------------------------------------------------------------------------
-- algorithms

local HMAC_MD = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }
local ASYM = { RS256 = { kind = "RSA", md = "sha256" }, ES256 = { kind = "EC", md = "sha256", curve = "prime256v1", size = 32 } }
local RSA_MIN_BITS = 2048

-- ES256 signatures travel as raw r||s (RFC 7518 section 3.4); OpenSSL wants
-- a DER ECDSA-Sig-Value: SEQUENCE { INTEGER r, INTEGER s }.
local function der_int(x)
  local i, n = 1, #x
  while i < n and byte(x, i) == 0 do i = i + 1 end
  x = sub(x, i)
  if byte(x, 1) >= 0x80 then x = "\0" .. x end
  return "\2" .. char(#x) .. x
end

local function ecdsa_raw_to_der(sig, size)
  if #sig ~= 2 * size then return nil end
  local body = der_int(sub(sig, 1, size)) .. der_int(sub(sig, size + 1))
  return "\48" .. char(#body) .. body -- at most 70 bytes for P-256: short form
end

local function config_error(msg)
  error("sluice.jwt: " .. msg, 0)
end

local function is_list_of_strings(t)
  if type(t) ~= "table" or #t == 0 then return false end
  for _, v in ipairs(t) do if type(v) ~= "string" then return false end end
  return true
end

local function in_list(v, expected)
  if type(expected) == "string" then return v == expected end
  for i = 1, #expected do if expected[i] == v then return true end end
  return false
end

local function check_algs(algs)
  if not is_list_of_strings(algs) then
    config_error("opts.algs is required: a non-empty list such as {\"HS256\"} or {\"RS256\"}")
  end
  for _, a in ipairs(algs) do
    if a:lower() == "none" then config_error("alg 'none' can never be allowed") end
    if not HMAC_MD[a] and not ASYM[a] then
      config_error("unsupported algorithm '" .. a .. "' in opts.algs (supported: HS256 HS384 HS512 RS256 ES256)")
    end
  end
end

local function hmac_secret(opts)
  local secret = opts.secret
  if type(secret) ~= "string" or secret == "" then
    config_error("an HS* algorithm is allowed but opts.secret is not a non-empty string")
  end
  if find(secret, "-----BEGIN", 1, true) then
    config_error("opts.secret looks like a PEM key: refusing to use a public key as an HMAC secret")
  end
  return secret
end

local function public_key(opts)
  local pem = opts.public_key
  if type(pem) ~= "string" then
    config_error("an RS256/ES256 algorithm is allowed but opts.public_key (PEM) is missing")
  end
  local key, err = crypto.public_key(pem)
  if not key then config_error("opts.public_key: " .. err) end
  if key.kind == "RSA" and key.bits < RSA_MIN_BITS then
    config_error("opts.public_key: RSA key of " .. key.bits .. " bits is too small (minimum " .. RSA_MIN_BITS .. ")")
  end
  return key
end

local function verify_signature(alg, signing_input, sig, opts)
  local md = HMAC_MD[alg]
  if md then
    local mac = crypto.hmac(md, hmac_secret(opts), signing_input)
    return crypto.equal(mac, sig) or nil, "bad_signature"
  end
  local a = ASYM[alg]
  local key = public_key(opts)
  if key.kind ~= a.kind or (a.curve and key.curve and key.curve ~= a.curve) then
    return nil, "key_mismatch"
  end
  if a.kind == "EC" then
    sig = ecdsa_raw_to_der(sig, a.size)
    if not sig then return nil, "bad_signature" end
  end
  return crypto.verify(key, a.md, signing_input, sig) or nil, "bad_signature"
end

local function decode_object(b64)
  local raw = b64dec(b64)
  if not raw or not find(raw, "^%s*{") then return nil end
  local t = cjson.decode(raw)
  if type(t) ~= "table" then return nil end
  return t
end

local function check_claims(claims, opts)
  local now = opts.now or os.time()
  local leeway = opts.leeway or 0
  if type(now) ~= "number" then config_error("opts.now must be a number") end
  if type(leeway) ~= "number" or leeway < 0 then config_error("opts.leeway must be a non-negative number") end

  local exp, nbf, iat = claims.exp, claims.nbf, claims.iat
  if (exp ~= nil and type(exp) ~= "number") or (nbf ~= nil and type(nbf) ~= "number")
     or (iat ~= nil and type(iat) ~= "number") then
    return nil, "invalid_claim"
  end
  if exp and exp <= now - leeway then return nil, "expired" end
  if nbf and nbf > now + leeway then return nil, "not_yet_valid" end

  local req = opts.require
  if req ~= nil then
    if type(req) ~= "table" then config_error("opts.require must be a list of claim names") end
    for i = 1, #req do
      if claims[req[i]] == nil then return nil, "missing_claim" end
    end
  end

  local iss = opts.iss
  if iss ~= nil then
    if type(iss) ~= "string" and not is_list_of_strings(iss) then
      config_error("opts.iss must be a string or a list of strings")
    end
    if type(claims.iss) ~= "string" or not in_list(claims.iss, iss) then return nil, "wrong_issuer" end
  end

  local aud, taud = opts.aud, claims.aud
  if aud == nil then
    if taud ~= nil then return nil, "wrong_audience" end
  elseif aud ~= false then
    if type(aud) ~= "string" and not is_list_of_strings(aud) then
      config_error("opts.aud must be a string, a list of strings, or false")
    end
    local ok = false
    if type(taud) == "string" then
      ok = in_list(taud, aud)
    elseif type(taud) == "table" then
      for i = 1, #taud do
        if type(taud[i]) == "string" and in_list(taud[i], aud) then ok = true; break end
      end
    end
    if not ok then return nil, "wrong_audience" end
  end
  return true
end

function M.verify(token, opts)
  if type(opts) ~= "table" then config_error("jwt.verify(token, opts): opts table required") end
  local algs = opts.algs
  check_algs(algs)
  if type(token) ~= "string" or token == "" then return nil, "malformed" end
  if #token > (opts.max_length or DEFAULT_MAX_LENGTH) then return nil, "too_long" end

  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 or find(token, ".", d2 + 1, true) or d1 == 1 or d2 == d1 + 1 then
    return nil, "malformed"
  end

  local header = decode_object(sub(token, 1, d1 - 1))
  if not header then return nil, "malformed" end
  local alg = header.alg
  if type(alg) ~= "string" then return nil, "malformed" end
  if alg:lower() == "none" then return nil, "alg_none" end
  if not in_list(alg, algs) then return nil, "alg_not_allowed" end
  if header.crit ~= nil then return nil, "unsupported_crit" end

  local sig = b64dec(sub(token, d2 + 1))
  if not sig or sig == "" then return nil, "malformed" end
  local ok, reason = verify_signature(alg, sub(token, 1, d2 - 1), sig, opts)
  if not ok then return nil, reason end

  local claims = decode_object(sub(token, d1 + 1, d2 - 1))
  if not claims then return nil, "malformed" end
  ok, reason = check_claims(claims, opts)
  if not ok then return nil, reason end
  return claims, header
end

-- Raises on a misconfigured opts table (what verify() would raise on at
-- request time), so an app can fail at load time instead: checks algs, the
-- secret and/or public key each allowed algorithm needs, and the types of
-- leeway, now, iss, aud and require.
function M.check_opts(opts)
  if type(opts) ~= "table" then config_error("opts table required") end
  check_algs(opts.algs)
  local key
  for _, a in ipairs(opts.algs) do
    if HMAC_MD[a] then hmac_secret(opts) else key = key or public_key(opts) end
  end
  if key then
    local usable = false
    for _, a in ipairs(opts.algs) do
      local spec = ASYM[a]
      if spec and spec.kind == key.kind and not (spec.curve and key.curve and key.curve ~= spec.curve) then
        usable = true
      end
    end
    if not usable then
      config_error("opts.public_key (" .. key.kind .. (key.curve and (" " .. key.curve) or "")
                   .. ") cannot verify any of the allowed algorithms")
    end
  end
  check_claims({}, opts)
  if opts.max_length ~= nil and type(opts.max_length) ~= "number" then
    config_error("opts.max_length must be a number")
  end
  return true
end

function M.sign(claims, opts)
  if type(claims) ~= "table" then config_error("jwt.sign(claims, opts): claims table required") end
  opts = opts or {}
  local alg = opts.alg or "HS256"
  local md = HMAC_MD[alg]
  if not md then config_error("jwt.sign supports HS256/HS384/HS512 only, not '" .. tostring(alg) .. "'") end
  local secret = hmac_secret(opts)
  local header = { typ = "JWT" }
  for k, v in pairs(opts.header or {}) do header[k] = v end
  header.alg = alg
  local hj, err = cjson.encode(header)
  if not hj then config_error("cannot encode header: " .. err) end
  local cj
  cj, err = cjson.encode(claims)
  if not cj then config_error("cannot encode claims: " .. err) end
  local input = M.b64url_encode(hj) .. "." .. M.b64url_encode(cj)
  return input .. "." .. M.b64url_encode(crypto.hmac(md, secret, input))
end

return M
