-- sluice.testing.tokens: JWTs for specs, and keys to sign them with.
--
--   tokens.jwt{ alg = "HS256", secret = "...", claims = {...}, header = {...},
--               expires_in = 3600 }
--   tokens.jwt{ alg = "RS256" | "ES256", key = PRIVATE_PEM, claims = {...} }
--   tokens.keypair("RS256" | "ES256") -> { private = PEM, public = PEM }
--
-- HS* tokens come from sluice.jwt.sign, the library's own encoder. The
-- library verifies RS256/ES256 but signs only HMAC (asymmetric signing is
-- an identity provider's job), so those are signed here with the openssl
-- command line: the kit runs in the test process, never in the server.
-- Keys are generated the same way, once per algorithm and process.
local jwt = require "sluice.jwt"
local json = require "sluice.json"

local M = {}

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function tmpname()
  local p = io.popen("mktemp /tmp/sluice-test-key.XXXXXX")
  local name = p and p:read("*l")
  if p then p:close() end
  assert(name and name ~= "", "sluice.testing: mktemp failed")
  return name
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Runs an openssl command; its stdout, or raises with its stderr.
local function openssl(args)
  local err = tmpname()
  local p = assert(io.popen("openssl " .. args .. " 2>" .. quote(err)))
  local out = p:read("*a")
  local ok = p:close()
  local msg = read(err) or ""
  os.remove(err)
  if ok ~= true and ok ~= 0 or (out == "" and msg ~= "") then
    error("sluice.testing: openssl " .. args .. " failed: " .. msg, 3)
  end
  return out
end

local keys = {}

function M.keypair(alg)
  alg = alg or "RS256"
  if keys[alg] then return keys[alg] end
  local gen
  if alg == "RS256" then
    gen = "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048"
  elseif alg == "ES256" then
    gen = "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
  else
    error("sluice.testing.keypair: RS256 or ES256, not " .. tostring(alg), 2)
  end
  local private = openssl(gen)
  local f = tmpname()
  write(f, private)
  local public = openssl("pkey -pubout -in " .. quote(f))
  os.remove(f)
  keys[alg] = { alg = alg, private = private, public = public }
  return keys[alg]
end

-- DER ECDSA-Sig-Value (SEQUENCE { INTEGER r, INTEGER s }) -> raw r||s of
-- size bytes each, as JWS wants (RFC 7518 section 3.4).
local function der_to_raw(der, size)
  local pos = 3
  if der:byte(2) == 0x81 then pos = 4 end
  local out = {}
  for i = 1, 2 do
    assert(der:byte(pos) == 2, "sluice.testing: unexpected ECDSA signature encoding")
    local len = der:byte(pos + 1)
    local int = der:sub(pos + 2, pos + 1 + len)
    pos = pos + 2 + len
    int = int:gsub("^%z+", "")
    out[i] = string.rep("\0", size - #int) .. int
  end
  return out[1] .. out[2]
end

local ASYM = { RS256 = true, ES256 = true }

function M.jwt(opts)
  if type(opts) ~= "table" then error("sluice.testing.jwt{ alg =, secret = | key =, claims = }", 2) end
  local alg = opts.alg or "HS256"
  local claims = {}
  for k, v in pairs(opts.claims or {}) do claims[k] = v end
  if opts.expires_in and claims.exp == nil then claims.exp = os.time() + opts.expires_in end
  if not ASYM[alg] then
    return jwt.sign(claims, { alg = alg, secret = opts.secret or opts.key, header = opts.header })
  end
  local key = opts.key or opts.private_key
  if type(key) == "table" then key = key.private end
  if type(key) ~= "string" or not key:find("-----BEGIN", 1, true) then
    error("sluice.testing.jwt: " .. alg .. " needs key = a private key PEM (see testing.keypair)", 2)
  end
  local header = { typ = "JWT" }
  for k, v in pairs(opts.header or {}) do header[k] = v end
  header.alg = alg
  local input = jwt.b64url_encode(json.encode(header)) .. "." .. jwt.b64url_encode(json.encode(claims))
  local kf, df = tmpname(), tmpname()
  write(kf, key)
  write(df, input)
  local ok, sig = pcall(openssl, ("dgst -sha256 -binary -sign %s %s"):format(quote(kf), quote(df)))
  os.remove(kf)
  os.remove(df)
  if not ok then error(sig, 2) end
  if alg == "ES256" then sig = der_to_raw(sig, 32) end
  return input .. "." .. jwt.b64url_encode(sig)
end

return M
