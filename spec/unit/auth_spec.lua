package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

local auth = require "sluice.auth"
local jwt = require "sluice.jwt"

local NOW = 1700000000
local SECRET = "auth-spec-secret-0123456789abcdef"

local function req(t)
  return {
    method = "GET", path = "/orders/42", params = {}, remote_addr = "127.0.0.1",
    headers = t.headers or {}, cookies = t.cookies or {}, query = t.query or {},
  }
end

describe("sluice.auth", function()
  describe("token()", function()
    local cases = {
      -- name, request, opts, expected token, expected source
      { "Bearer header", { headers = { authorization = "Bearer abc.def.ghi" } }, nil, "abc.def.ghi", "header" },
      { "lowercase scheme", { headers = { authorization = "bearer abc" } }, nil, "abc", "header" },
      { "uppercase scheme", { headers = { authorization = "BEARER abc" } }, nil, "abc", "header" },
      { "several spaces, trailing space", { headers = { authorization = "Bearer   abc=  " } }, nil, "abc=", "header" },
      { "b64token charset", { headers = { authorization = "Bearer aZ09-._~+/==" } }, nil, "aZ09-._~+/==", "header" },
      { "Basic scheme ignored", { headers = { authorization = "Basic dXNlcjpwdw==" } }, nil, nil },
      { "scheme without token", { headers = { authorization = "Bearer" } }, nil, nil },
      { "two tokens", { headers = { authorization = "Bearer a b" } }, nil, nil },
      { "bad characters", { headers = { authorization = "Bearer a\"b" } }, nil, nil },
      { "Bearer glued to token", { headers = { authorization = "Bearerabc" } }, nil, nil },
      { "multi-valued header is ambiguous", { headers = { authorization = { "Bearer a", "Bearer b" } } }, nil, nil },
      { "no header", {}, nil, nil },
      { "cookie not accepted by default", { cookies = { access_token = "c" } }, nil, nil },
      { "query not accepted by default", { query = { access_token = "q" } }, nil, nil },
      { "cookie when allowed", { cookies = { access_token = "c" } }, { from = { "cookie" } }, "c", "cookie" },
      { "custom cookie name", { cookies = { sid = "c" } }, { from = { "cookie" }, cookie = "sid" }, "c", "cookie" },
      { "query when allowed", { query = { access_token = "q" } }, { from = { "query" } }, "q", "query" },
      { "custom query name", { query = { t = "q" } }, { from = { "query" }, query = "t" }, "q", "query" },
      { "from as a single string", { query = { access_token = "q" } }, { from = "query" }, "q", "query" },
      { "order: header first",
        { headers = { authorization = "Bearer h" }, cookies = { access_token = "c" }, query = { access_token = "q" } },
        { from = { "header", "cookie", "query" } }, "h", "header" },
      { "order: query first",
        { headers = { authorization = "Bearer h" }, cookies = { access_token = "c" }, query = { access_token = "q" } },
        { from = { "query", "cookie", "header" } }, "q", "query" },
      { "falls through a bad header to the cookie",
        { headers = { authorization = "Basic x" }, cookies = { access_token = "c" } },
        { from = { "header", "cookie" } }, "c", "cookie" },
      { "empty cookie is no token", { cookies = { access_token = "" } }, { from = { "cookie" } }, nil },
      { "custom header name", { headers = { ["x-auth"] = "Bearer x" } }, { header = "x-auth" }, "x", "header" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local tok, src = auth.token(req(c[2]), c[3])
        if c[4] == nil then
          assert.is_nil(tok)
          assert.are.equal("no_token", src)
        else
          assert.are.equal(c[4], tok)
          assert.are.equal(c[5], src)
        end
      end)
    end

    it("raises on an unknown source", function()
      assert.has_error(function() auth.token(req {}, { from = { "body" } }) end,
        "sluice.auth: unknown token source 'body' (use header, cookie or query)")
    end)
  end)

  describe("jwt()", function()
    local good = jwt.sign({ sub = "u1", exp = NOW + 60 }, { secret = SECRET })
    local expired = jwt.sign({ sub = "u1", exp = NOW - 60 }, { secret = SECRET })
    local opts = { algs = { "HS256" }, secret = SECRET, now = NOW, from = { "header", "cookie" } }
    local cases = {
      { "valid header token", { headers = { authorization = "Bearer " .. good } }, "u1", "header" },
      { "valid cookie token", { cookies = { access_token = good } }, "u1", "cookie" },
      { "query not in opts.from", { query = { access_token = good } }, nil, "no_token" },
      { "expired", { headers = { authorization = "Bearer " .. expired } }, nil, "expired" },
      { "garbage", { headers = { authorization = "Bearer abc" } }, nil, "malformed" },
      { "none", {}, nil, "no_token" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local claims, second = auth.jwt(req(c[2]), opts)
        if c[3] then
          assert.are.equal(c[3], claims.sub)
          assert.are.equal(c[4], second)
        else
          assert.is_nil(claims)
          assert.are.equal(c[4], second)
        end
      end)
    end

    it("raises without opts", function()
      assert.has_error(function() auth.jwt(req {}) end)
    end)
  end)

  describe("challenge()", function()
    local cases = {
      { nil, 'Bearer realm="sluice"', 401 },
      { { reason = "no_token" }, 'Bearer realm="sluice"', 401 },
      { { reason = "expired" }, 'Bearer realm="sluice", error="invalid_token"', 401 },
      { { reason = "bad_signature", realm = "orders" }, 'Bearer realm="orders", error="invalid_token"', 401 },
      { { error = "insufficient_scope", scope = "orders:read" },
        'Bearer realm="sluice", error="insufficient_scope", scope="orders:read"', 403 },
      { { error = "invalid_request" }, 'Bearer realm="sluice", error="invalid_request"', 400 },
      { { realm = 'a"b\\c' }, 'Bearer realm="a\\"b\\\\c"', 401 },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. ": " .. c[2], function()
        assert.are.equal(c[2], auth.challenge(c[1]))
        assert.are.equal(c[3], auth.status(c[1]))
      end)
    end

    it("never leaks the detailed reason", function()
      for _, r in ipairs { "expired", "wrong_audience", "alg_not_allowed", "bad_signature" } do
        assert.is_nil(auth.challenge { reason = r }:find(r, 1, true))
      end
    end)

    it("rejects unknown error codes and control characters", function()
      assert.has_error(function() auth.challenge { error = "expired" } end)
      assert.has_error(function() auth.challenge { realm = "a\r\nSet-Cookie: x" } end)
    end)
  end)
end)
