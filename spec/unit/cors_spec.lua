package.path = "./lua/?.lua;./lua/?/init.lua;./spec/helpers/?.lua;" .. package.path
local expect_refused = require "refusals"

local cors = require "sluice.cors"

local function req(headers, method)
  return { method = method or "GET", path = "/s", params = {}, query = {}, cookies = {},
           remote_addr = "127.0.0.1", headers = headers or {} }
end

local ACAO = "Access-Control-Allow-Origin"
local ACAC = "Access-Control-Allow-Credentials"

describe("sluice.cors", function()
  describe("allowed()", function()
    local policies = {
      exact = { origins = { "https://app.example.com" } },
      exact_port = { origins = { "https://app.example.com:8443/" } },
      schemeless = { origins = { "app.example.com" } },
      wild = { origins = { "*.example.com" } },
      wild_https = { origins = { "https://*.example.com" } },
      wild_port = { origins = { "http://*.example.com:8080" } },
      any = { origins = { "*" } },
      any_cred = { origins = { "*" }, credentials = true },
      null = { origins = { "null" } },
      ipv6 = { origins = { "http://[::1]:3000" } },
    }
    -- policy, origin, expected
    local cases = {
      { "exact", "https://app.example.com", true },
      { "exact", "HTTPS://APP.EXAMPLE.COM", true },
      { "exact", "http://app.example.com", false },
      { "exact", "https://app.example.com:8443", false },
      { "exact", "https://app.example.com.evil.net", false },
      { "exact", "https://evilapp.example.com", false },
      { "exact", "https://x.app.example.com", false },
      { "exact", "https://app.example.com/", false },
      { "exact", "https://user@app.example.com", false },
      { "exact", "https://app.example.com\r\nX: y", false },
      { "exact", "app.example.com", false },
      { "exact", "", false },
      { "exact", "null", false },
      { "exact_port", "https://app.example.com:8443", true },
      { "exact_port", "https://app.example.com", false },
      { "schemeless", "https://app.example.com", true },
      { "schemeless", "http://app.example.com", true },
      { "schemeless", "ftp://app.example.com", false },
      { "wild", "https://a.example.com", true },
      { "wild", "http://a.example.com", true },
      { "wild", "https://a.b.example.com", true },
      { "wild", "https://example.com", false },
      { "wild", "https://evil-example.com", false },
      { "wild", "https://aexample.com", false },
      { "wild", "https://example.com.evil.net", false },
      { "wild", "https://a.example.com.evil.net", false },
      { "wild", "https://a.example.com:444", false },
      { "wild", "wss://a.example.com", false },
      { "wild_https", "https://a.example.com", true },
      { "wild_https", "http://a.example.com", false },
      { "wild_port", "http://a.example.com:8080", true },
      { "wild_port", "http://a.example.com", false },
      { "wild_port", "http://a.example.com:8081", false },
      { "any", "https://whatever.test", true },
      { "any", "null", true },
      { "any", "not an origin", false },
      { "any_cred", "https://whatever.test", true },
      { "any_cred", "null", false },
      { "null", "null", true },
      { "null", "https://x.test", false },
      { "ipv6", "http://[::1]:3000", true },
      { "ipv6", "http://[::2]:3000", false },
    }
    local compiled = {}
    for name, o in pairs(policies) do compiled[name] = cors.new(o) end
    for _, c in ipairs(cases) do
      it(string.format("%s: %q -> %s", c[1], c[2], tostring(c[3])), function()
        assert.are.equal(c[3], compiled[c[1]]:allowed(c[2]))
      end)
    end
    it("non-string origin is not allowed", function()
      assert.is_false(compiled.any:allowed(nil))
      assert.is_false(compiled.any:allowed({}))
    end)
  end)

  describe("headers()", function()
    local cases = {
      { "exact origin echoed", { origins = { "https://app.example.com" } },
        { origin = "https://app.example.com" },
        { Vary = "Origin", [ACAO] = "https://app.example.com" } },
      { "wildcard subdomain echoed", { origins = { "*.example.com" } },
        { origin = "https://a.b.example.com" },
        { Vary = "Origin", [ACAO] = "https://a.b.example.com" } },
      { "disallowed: only Vary", { origins = { "https://app.example.com" } },
        { origin = "https://evil.test" }, { Vary = "Origin" } },
      { "no Origin: only Vary", { origins = { "*" } }, {}, { Vary = "Origin" } },
      { "no Origin with reject: only Vary", { origins = { "https://a.test" }, reject = true }, {}, { Vary = "Origin" } },
      { "any without credentials: literal *", { origins = { "*" } },
        { origin = "https://x.test" }, { Vary = "Origin", [ACAO] = "*" } },
      { "any with credentials: echo, never *", { origins = { "*" }, credentials = true },
        { origin = "https://x.test" }, { Vary = "Origin", [ACAO] = "https://x.test", [ACAC] = "true" } },
      { "any with credentials: null not echoed", { origins = { "*" }, credentials = true },
        { origin = "null" }, { Vary = "Origin" } },
      { "credentials with exact origin", { origins = { "https://a.test" }, credentials = true },
        { origin = "https://a.test" }, { Vary = "Origin", [ACAO] = "https://a.test", [ACAC] = "true" } },
      { "mixed list with * and credentials still echoes", { origins = { "https://a.test", "*" }, credentials = true },
        { origin = "https://b.test" }, { Vary = "Origin", [ACAO] = "https://b.test", [ACAC] = "true" } },
      { "expose headers", { origins = { "https://a.test" }, expose = { "X-Request-Id", "X-Variant" } },
        { origin = "https://a.test" },
        { Vary = "Origin", [ACAO] = "https://a.test", ["Access-Control-Expose-Headers"] = "X-Request-Id, X-Variant" } },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local h = cors.new(c[2]):headers(req(c[3]))
        assert.are.same(c[4], h)
        assert.are_not.equal("*", c[2].credentials and h[ACAO] or nil)
      end)
    end

    it("reject = true refuses disallowed origins with 403", function()
      local p = cors.new { origins = { "https://a.test" }, reject = true }
      assert.are.same({ nil, 403 }, { p:headers(req { origin = "https://b.test" }) })
      assert.is_table(p:headers(req { origin = "https://a.test" }))
    end)

    it("returns a fresh table on every call", function()
      local p = cors.new { origins = { "*" } }
      local a, b = p:headers(req { origin = "https://x.test" }), p:headers(req { origin = "https://x.test" })
      assert.are_not.equal(a, b)
    end)

    it("never sends * with credentials, over many origins", function()
      local p = cors.new { origins = { "*", "*.example.com" }, credentials = true }
      for i = 1, 200 do
        local h = p:headers(req { origin = "https://h" .. i .. ".example.com" })
        assert.are.equal("https://h" .. i .. ".example.com", h[ACAO])
        local _, ph = p:preflight(req({ origin = "https://h" .. i .. ".test", ["access-control-request-method"] = "GET" }, "OPTIONS"))
        assert.are_not.equal("*", ph[ACAO])
      end
    end)
  end)

  describe("preflight()", function()
    local base = { origins = { "https://app.example.com" }, max_age = 600 }
    local PV = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    local cases = {
      { "allowed", base,
        { origin = "https://app.example.com", ["access-control-request-method"] = "GET",
          ["access-control-request-headers"] = "authorization, last-event-id" },
        204, { Vary = PV, [ACAO] = "https://app.example.com", ["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS",
               ["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID",
               ["Access-Control-Max-Age"] = "600" } },
      { "disallowed origin", base,
        { origin = "https://evil.test", ["access-control-request-method"] = "GET" }, 204, { Vary = PV } },
      { "disallowed origin with reject", { origins = { "https://a.test" }, reject = true },
        { origin = "https://evil.test", ["access-control-request-method"] = "GET" }, 403, { Vary = PV } },
      { "method not allowed", base,
        { origin = "https://app.example.com", ["access-control-request-method"] = "DELETE" }, 204, { Vary = PV } },
      { "header not allowed", base,
        { origin = "https://app.example.com", ["access-control-request-method"] = "GET",
          ["access-control-request-headers"] = "x-secret" }, 204, { Vary = PV } },
      { "not a preflight (no request method)", base,
        { origin = "https://app.example.com" }, 204, { Vary = "Origin", Allow = "GET, POST, OPTIONS" } },
      { "credentials, custom methods", { origins = { "https://a.test" }, credentials = true, methods = { "GET" }, headers = {} },
        { origin = "https://a.test", ["access-control-request-method"] = "GET" },
        204, { Vary = PV, [ACAO] = "https://a.test", [ACAC] = "true", ["Access-Control-Allow-Methods"] = "GET" } },
      { "headers * without credentials", { origins = { "*" }, headers = { "*" } },
        { origin = "https://x.test", ["access-control-request-method"] = "POST", ["access-control-request-headers"] = "x-anything" },
        204, { Vary = PV, [ACAO] = "*", ["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS",
               ["Access-Control-Allow-Headers"] = "*" } },
      { "headers * with credentials echoes the request", { origins = { "*" }, credentials = true, headers = { "*" } },
        { origin = "https://x.test", ["access-control-request-method"] = "POST", ["access-control-request-headers"] = "x-a, x-b" },
        204, { Vary = PV, [ACAO] = "https://x.test", [ACAC] = "true",
               ["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS", ["Access-Control-Allow-Headers"] = "x-a, x-b" } },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local status, h = cors.new(c[2]):preflight(req(c[3], "OPTIONS"))
        assert.are.equal(c[4], status)
        assert.are.same(c[5], h)
      end)
    end
  end)

  describe("configuration errors", function()
    local cases = {
      { nil, "opts table required" },
      { {}, "opts.origins must be a non-empty list" },
      { { origins = {} }, "opts.origins must be a non-empty list" },
      { { origins = { "https://*" } }, "invalid origin pattern" },
      { { origins = { "*.com" } }, "invalid origin pattern" },
      { { origins = { "https://a.*.com" } }, "invalid origin pattern" },
      { { origins = { "https://a.com/path" } }, "invalid origin pattern" },
      { { origins = { "*" }, methods = { "GET\r\n" } }, "HTTP tokens" },
      { { origins = { "*" }, max_age = -1 }, "max_age" },
    }
    expect_refused(cors.new, cases)
  end)
end)
