package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

-- Every signature verified here is produced by the openssl command line
-- tool (keys generated into a temporary directory at setup), never by the
-- code under test, so a bug shared by signer and verifier cannot hide.

local jwt = require "sluice.jwt"

local NOW = 1700000000

local tmp -- temp dir
local keys = {} -- name -> { priv = path, pub = PEM text }

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok == 0 or ok == true, "command failed: " .. cmd)
end

local function readfile(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function writefile(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

local b64 = jwt.b64url_encode

-- DER ECDSA-Sig-Value -> raw r||s (size bytes each), for ES256 tokens.
local function der_to_raw(der, size)
  assert(der:byte(1) == 0x30, "not a DER sequence")
  local pos = 3
  if der:byte(2) >= 0x80 then pos = 3 + (der:byte(2) - 0x80) end
  local out = {}
  for _ = 1, 2 do
    assert(der:byte(pos) == 0x02, "expected INTEGER")
    local len = der:byte(pos + 1)
    local v = der:sub(pos + 2, pos + 1 + len)
    pos = pos + 2 + len
    v = v:gsub("^%z+", "")
    out[#out + 1] = string.rep("\0", size - #v) .. v
  end
  return out[1] .. out[2]
end

-- Sign `input` with openssl: HS* via -hmac, RS256/ES256 via -sign.
local function openssl_sign(alg, input, key)
  local inp = tmp .. "/input"
  local sigf = tmp .. "/sig"
  writefile(inp, input)
  local bits = alg:sub(3)
  if alg:sub(1, 2) == "HS" then
    writefile(tmp .. "/hkey", key)
    -- key passed as hex to avoid any shell quoting of the secret
    local hex = key:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    sh(string.format("openssl dgst -sha%s -mac HMAC -macopt hexkey:%s -binary -out %s %s", bits, hex, sigf, inp))
    return readfile(sigf)
  end
  sh(string.format("openssl dgst -sha%s -sign %s -out %s %s", bits, keys[key].priv, sigf, inp))
  local sig = readfile(sigf)
  if alg == "ES256" then sig = der_to_raw(sig, 32) end
  return sig
end

local SECRET = "a-long-enough-hmac-secret-for-tests-0123456789"

local function token(alg, claims_json, key, header_json)
  header_json = header_json or string.format('{"alg":"%s","typ":"JWT"}', alg)
  local input = b64(header_json) .. "." .. b64(claims_json)
  return input .. "." .. b64(openssl_sign(alg, input, key or SECRET))
end

local function claims_json(t)
  local parts = {}
  for k, v in pairs(t) do
    local vs
    if type(v) == "string" then vs = '"' .. v .. '"'
    elseif type(v) == "table" then
      local a = {}
      for i, x in ipairs(v) do a[i] = '"' .. x .. '"' end
      vs = "[" .. table.concat(a, ",") .. "]"
    else vs = tostring(v) end
    parts[#parts + 1] = '"' .. k .. '":' .. vs
  end
  table.sort(parts)
  return "{" .. table.concat(parts, ",") .. "}"
end

local function replace_part(tok, idx, new)
  local p = {}
  for s in (tok .. "."):gmatch("([^.]*)%.") do p[#p + 1] = s end
  p[idx] = new
  return table.concat(p, ".")
end

setup(function()
  local f = assert(io.popen("mktemp -d"))
  tmp = f:read("*l")
  f:close()
  assert(tmp and #tmp > 0)
  local gen = {
    rsa = "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s",
    rsa2 = "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s",
    rsa1024 = "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out %s",
    ec = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s",
    ec2 = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s",
    ec384 = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out %s",
  }
  for name, cmd in pairs(gen) do
    local priv = tmp .. "/" .. name .. ".pem"
    sh(string.format(cmd, priv))
    sh(string.format("openssl pkey -in %s -pubout -out %s.pub", priv, priv))
    keys[name] = { priv = priv, pub = readfile(priv .. ".pub") }
  end
  sh(string.format("openssl req -new -x509 -key %s -subj /CN=sluice-test -days 2 -out %s/ec.crt",
                   keys.ec.priv, tmp))
  keys.ec.cert = readfile(tmp .. "/ec.crt")
end)

teardown(function()
  if tmp and tmp:match("^/tmp/") then os.execute("rm -rf '" .. tmp .. "'") end
end)

local BASE = { sub = "user-42", iss = "https://id.example.com", aud = "sluice", exp = NOW + 600, nbf = NOW - 10, iat = NOW - 10 }

local function with(over)
  local t = {}
  for k, v in pairs(BASE) do t[k] = v end
  for k, v in pairs(over or {}) do
    if v == "__nil" then t[k] = nil else t[k] = v end
  end
  return claims_json(t)
end

local function opts_for(alg, over)
  local o = { algs = { alg }, now = NOW, iss = "https://id.example.com", aud = "sluice" }
  if alg:sub(1, 2) == "HS" then o.secret = SECRET
  elseif alg == "RS256" then o.public_key = keys.rsa.pub
  else o.public_key = keys.ec.pub end
  for k, v in pairs(over or {}) do o[k] = v end
  return o
end

describe("sluice.jwt", function()
  describe("base64url", function()
    local cases = {
      { "", "" }, { "f", "Zg" }, { "fo", "Zm8" }, { "foo", "Zm9v" }, { "foob", "Zm9vYg" },
      { "fooba", "Zm9vYmE" }, { "foobar", "Zm9vYmFy" }, { "\255\254\253", "__79" }, { "\251\255", "-_8" },
    }
    for _, c in ipairs(cases) do
      it("round-trips " .. string.format("%q", c[1]), function()
        assert.are.equal(c[2], jwt.b64url_encode(c[1]))
        assert.are.equal(c[1], jwt.b64url_decode(c[2]))
      end)
    end
    for _, bad in ipairs { "Z", "Zm9v=", "Zm+v", "Zm/v", "Zm9 v", "Zh", "Zm9", "Zm9vYh" } do
      it("rejects " .. bad, function()
        assert.is_nil(jwt.b64url_decode(bad))
      end)
    end
  end)

  describe("valid tokens", function()
    for _, alg in ipairs { "HS256", "HS384", "HS512", "RS256", "ES256" } do
      it("verifies " .. alg .. " signed by openssl", function()
        local key = (alg == "RS256" and "rsa") or (alg == "ES256" and "ec") or SECRET
        local tok = token(alg, with(), key)
        local claims, header = jwt.verify(tok, opts_for(alg))
        assert.is_table(claims, tostring(header))
        assert.are.equal("user-42", claims.sub)
        assert.are.equal(alg, header.alg)
      end)
    end

    it("accepts an ES256 key given as a certificate", function()
      local tok = token("ES256", with(), "ec")
      assert.is_table(jwt.verify(tok, opts_for("ES256", { public_key = keys.ec.cert })))
    end)

    it("accepts a route allowing several algorithms", function()
      local o = opts_for("RS256", { algs = { "ES256", "RS256" } })
      assert.is_table(jwt.verify(token("RS256", with(), "rsa"), o))
      o.public_key = keys.ec.pub
      assert.is_table(jwt.verify(token("ES256", with(), "ec"), o))
    end)

    it("accepts an aud array containing the expected audience", function()
      local tok = token("HS256", with { aud = { "other", "sluice" } })
      assert.is_table(jwt.verify(tok, opts_for("HS256")))
    end)

    it("accepts a list of issuers", function()
      local tok = token("HS256", with())
      assert.is_table(jwt.verify(tok, opts_for("HS256", { iss = { "x", "https://id.example.com" } })))
    end)

    it("uses os.time() when opts.now is absent", function()
      local tok = token("HS256", claims_json { sub = "x", exp = os.time() + 60 })
      assert.is_table(jwt.verify(tok, { algs = { "HS256" }, secret = SECRET }))
      tok = token("HS256", claims_json { sub = "x", exp = os.time() - 60 })
      assert.are.same({ nil, "expired" }, { jwt.verify(tok, { algs = { "HS256" }, secret = SECRET }) })
    end)

    it("jwt.sign output verifies, and matches openssl's MAC", function()
      for _, alg in ipairs { "HS256", "HS384", "HS512" } do
        local tok = jwt.sign({ sub = "s", exp = NOW + 5 }, { alg = alg, secret = SECRET })
        local claims = jwt.verify(tok, { algs = { alg }, secret = SECRET, now = NOW })
        assert.are.equal("s", claims.sub)
        local input = tok:match("^(.*)%.")
        assert.are.equal(b64(openssl_sign(alg, input, SECRET)), tok:match("([^.]*)$"))
      end
    end)
  end)

  describe("refusals", function()
    -- { name, token builder, opts overrides / builder, expected reason }
    local cases = {
      { "expired", function() return token("HS256", with { exp = NOW - 1 }) end, nil, "expired" },
      { "expired exactly now", function() return token("HS256", with { exp = NOW }) end, nil, "expired" },
      { "expired beyond leeway", function() return token("HS256", with { exp = NOW - 31 }) end, { leeway = 30 }, "expired" },
      { "expired within leeway is accepted", function() return token("HS256", with { exp = NOW - 29 }) end, { leeway = 30 }, true },
      { "not yet valid", function() return token("HS256", with { nbf = NOW + 1 }) end, nil, "not_yet_valid" },
      { "nbf == now is valid", function() return token("HS256", with { nbf = NOW }) end, nil, true },
      { "not yet valid beyond leeway", function() return token("HS256", with { nbf = NOW + 31 }) end, { leeway = 30 }, "not_yet_valid" },
      { "not yet valid within leeway is accepted", function() return token("HS256", with { nbf = NOW + 30 }) end, { leeway = 30 }, true },
      { "exp not a number", function() return token("HS256", with { exp = "tomorrow" }) end, nil, "invalid_claim" },
      { "wrong audience", function() return token("HS256", with { aud = "other" }) end, nil, "wrong_audience" },
      { "wrong audience in array", function() return token("HS256", with { aud = { "a", "b" } }) end, nil, "wrong_audience" },
      { "missing audience", function() return token("HS256", with { aud = "__nil" }) end, nil, "wrong_audience" },
      { "token aud but route expects none", function() return token("HS256", with()) end, { aud = "__nil" }, "wrong_audience" },
      { "aud = false accepts any audience", function() return token("HS256", with { aud = "other" }) end, { aud = false }, true },
      { "wrong issuer", function() return token("HS256", with { iss = "https://evil.example.com" }) end, nil, "wrong_issuer" },
      { "missing issuer", function() return token("HS256", with { iss = "__nil" }) end, nil, "wrong_issuer" },
      { "required claim missing", function() return token("HS256", with { sub = "__nil" }) end, { require = { "exp", "sub" } }, "missing_claim" },
      { "wrong HMAC secret", function() return token("HS256", with(), "another-secret") end, nil, "bad_signature" },
      { "tampered signature (HS256)", function()
          local t = token("HS256", with())
          local last = t:sub(-2, -2) == "A" and "B" or "A"
          return t:sub(1, -3) .. last .. t:sub(-1)
        end, nil, "bad_signature" },
      { "tampered signature (RS256)", function()
          local t = token("RS256", with(), "rsa")
          local sig = jwt.b64url_decode(t:match("([^.]*)$"))
          sig = string.char((sig:byte(1) + 1) % 256) .. sig:sub(2)
          return replace_part(t, 3, b64(sig))
        end, "RS256", "bad_signature" },
      { "tampered signature (ES256)", function()
          local t = token("ES256", with(), "ec")
          local sig = jwt.b64url_decode(t:match("([^.]*)$"))
          sig = sig:sub(1, 63) .. string.char((sig:byte(64) + 1) % 256)
          return replace_part(t, 3, b64(sig))
        end, "ES256", "bad_signature" },
      { "truncated ES256 signature", function()
          local t = token("ES256", with(), "ec")
          return replace_part(t, 3, b64(jwt.b64url_decode(t:match("([^.]*)$")):sub(1, 63)))
        end, "ES256", "bad_signature" },
      { "ES256 signed by another key", function() return token("ES256", with(), "ec2") end, "ES256", "bad_signature" },
      { "RS256 signed by another key", function() return token("RS256", with(), "rsa2") end, "RS256", "bad_signature" },
      { "ES256 on a P-384 key", function() return token("ES256", with(), "ec") end,
        { algs = { "ES256" }, public_key = "ec384" }, "key_mismatch" },
      { "RS256 token, route key is EC", function() return token("RS256", with(), "rsa") end,
        { algs = { "RS256" }, public_key = "ec" }, "key_mismatch" },
      { "tampered payload (HS256)", function()
          local t = token("HS256", with())
          return replace_part(t, 2, b64(with { sub = "admin" }))
        end, nil, "bad_signature" },
      { "tampered payload (RS256)", function()
          local t = token("RS256", with(), "rsa")
          return replace_part(t, 2, b64(with { sub = "admin" }))
        end, "RS256", "bad_signature" },
      { "tampered header", function()
          local t = token("HS256", with())
          return replace_part(t, 1, b64('{"alg":"HS256","typ":"JWT","kid":"x"}'))
        end, nil, "bad_signature" },
      { "alg none", function() return b64('{"alg":"none"}') .. "." .. b64(with()) .. "." end, nil, "alg_none" },
      { "alg NoNe with a signature", function() return b64('{"alg":"NoNe"}') .. "." .. b64(with()) .. ".c2ln" end, nil, "alg_none" },
      { "alg not in the route's list", function() return token("HS384", with()) end, nil, "alg_not_allowed" },
      { "alg name case matters", function()
          local input = b64('{"alg":"hs256"}') .. "." .. b64(with())
          return input .. "." .. b64(openssl_sign("HS256", input, SECRET))
        end, nil, "alg_not_allowed" },
      -- The classic key confusion: an attacker signs HS256 with the server's
      -- RSA public key PEM as the HMAC secret.
      { "HS256 signed with the RSA public key on an RS256 route", function()
          return token("HS256", with(), keys.rsa.pub)
        end, "RS256", "alg_not_allowed" },
      { "HS256 signed with the EC public key on an ES256 route", function()
          return token("HS256", with(), keys.ec.pub)
        end, "ES256", "alg_not_allowed" },
      { "crit header", function()
          return token("HS256", with(), SECRET, '{"alg":"HS256","crit":["exp"]}')
        end, nil, "unsupported_crit" },
      { "two parts", function() local t = token("HS256", with()); return t:match("^(.*)%.") end, nil, "malformed" },
      { "four parts", function() return token("HS256", with()) .. ".xx" end, nil, "malformed" },
      { "empty string", function() return "" end, nil, "malformed" },
      { "not a string", function() return 42 end, nil, "malformed" },
      { "empty header part", function() local t = token("HS256", with()); return t:gsub("^[^.]*", "") end, nil, "malformed" },
      { "empty signature", function() local t = token("HS256", with()); return t:gsub("[^.]*$", "") end, nil, "malformed" },
      { "bad base64 in header", function() return "e!J.e30.c2ln" end, nil, "malformed" },
      { "padded base64", function()
          local t = token("HS256", with())
          return replace_part(t, 1, b64('{"alg":"HS256"}') .. "=")
        end, nil, "malformed" },
      { "bad base64 in signature", function()
          local t = token("HS256", with())
          return replace_part(t, 3, "sig*nature")
        end, nil, "malformed" },
      { "header is not JSON", function() return b64("alg=HS256") .. "." .. b64(with()) .. ".c2ln" end, nil, "malformed" },
      { "header is a JSON array", function() return b64('["HS256"]') .. "." .. b64(with()) .. ".c2ln" end, nil, "malformed" },
      { "alg is not a string", function() return b64('{"alg":256}') .. "." .. b64(with()) .. ".c2ln" end, nil, "malformed" },
      -- correctly signed, but the payload is not a JSON object
      { "payload is not JSON", function() return token("HS256", "sub=admin") end, nil, "malformed" },
      { "payload is a JSON array", function() return token("HS256", '["admin"]') end, nil, "malformed" },
      { "payload bad base64", function()
          local t = token("HS256", with())
          return replace_part(t, 2, "e30*")
        end, nil, "bad_signature" }, -- the signature covers the text, checked first
      { "too long", function() return token("HS256", claims_json { pad = string.rep("x", 9000) }) end, nil, "too_long" },
    }
    for _, c in ipairs(cases) do
      local name, build, over, expect = c[1], c[2], c[3], c[4]
      it(name, function()
        local tok = build()
        local o
        if type(over) == "string" then
          o = opts_for(over)
        else
          o = opts_for("HS256")
          for k, v in pairs(over or {}) do
            if v == "__nil" then o[k] = nil
            elseif k == "public_key" then o[k] = keys[v].pub
            else o[k] = v end
          end
        end
        local claims, reason = jwt.verify(tok, o)
        if expect == true then
          assert.is_table(claims, reason)
        else
          assert.is_nil(claims)
          assert.are.equal(expect, reason)
        end
      end)
    end
  end)

  describe("configuration errors raise", function()
    local cases = {
      { "no opts", nil, "opts table required" },
      { "no algs", { secret = SECRET }, "opts.algs is required" },
      { "empty algs", { algs = {}, secret = SECRET }, "opts.algs is required" },
      { "none in algs", { algs = { "none" } }, "can never be allowed" },
      { "unknown alg", { algs = { "PS256" } }, "unsupported algorithm 'PS256'" },
      { "HS without secret", { algs = { "HS256" } }, "opts.secret" },
      { "PEM as HMAC secret", { algs = { "HS256" }, secret = "-----BEGIN PUBLIC KEY-----\nabc" }, "looks like a PEM" },
      { "RS without key", { algs = { "RS256" } }, "opts.public_key" },
      { "garbage PEM", { algs = { "RS256" }, public_key = "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n" }, "cannot parse public key" },
      { "small RSA key", { algs = { "RS256" }, public_key = "rsa1024" }, "too small" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local o = c[2]
        if o and keys[o.public_key or ""] then o.public_key = keys[o.public_key].pub end
        local alg = o and o.algs and o.algs[1] or "HS256"
        local key = (alg == "RS256" and "rsa") or (alg == "ES256" and "ec") or SECRET
        local tok = (alg == "none" or alg == "PS256") and "a.b.c" or token(alg, with(), key)
        local ok, err = pcall(jwt.verify, tok, o)
        assert.is_false(ok)
        assert.truthy(tostring(err):find(c[3], 1, true), tostring(err))
        -- check_opts reports the same problem without a token
        ok, err = pcall(jwt.check_opts, o)
        assert.is_false(ok)
        assert.truthy(tostring(err):find(c[3], 1, true), tostring(err))
      end)
    end

    it("check_opts accepts good configurations", function()
      assert.is_true(jwt.check_opts(opts_for("HS256")))
      assert.is_true(jwt.check_opts(opts_for("RS256")))
      assert.is_true(jwt.check_opts(opts_for("ES256", { algs = { "ES256", "RS256" } })))
      assert.is_true(jwt.check_opts(opts_for("HS512", { algs = { "HS512", "ES256" }, public_key = keys.ec.pub })))
    end)

    local more = {
      { "key unusable for every alg", { algs = { "RS256" }, public_key = "ec" }, "cannot verify any of the allowed algorithms" },
      { "P-384 key for ES256", { algs = { "ES256" }, public_key = "ec384" }, "cannot verify any" },
      { "bad leeway", { algs = { "HS256" }, secret = SECRET, leeway = -5 }, "opts.leeway" },
      { "bad aud", { algs = { "HS256" }, secret = SECRET, aud = 5 }, "opts.aud" },
      { "bad iss", { algs = { "HS256" }, secret = SECRET, iss = { 5 } }, "opts.iss" },
      { "bad require", { algs = { "HS256" }, secret = SECRET, require = "exp" }, "opts.require" },
    }
    for _, c in ipairs(more) do
      it("check_opts: " .. c[1], function()
        local o = c[2]
        if o.public_key then o.public_key = keys[o.public_key].pub end
        local ok, err = pcall(jwt.check_opts, o)
        assert.is_false(ok)
        assert.truthy(tostring(err):find(c[3], 1, true), tostring(err))
      end)
    end

    it("jwt.sign refuses asymmetric algorithms", function()
      assert.has_error(function() jwt.sign({}, { alg = "RS256", secret = "x" }) end)
    end)
  end)
end)
