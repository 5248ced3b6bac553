-- The policy toolkit on the real binary: authorization by cookie and by
-- query token, CORS, per-view masking, variant selection, token expiry.
local server = require "server"
local client = require "client"
local jwt = require "sluice.jwt"
local json = require "cjson"

local SECRET = "spec-secret-that-is-long-enough-1234"

local MAIN = [[
local sluice = require "sluice"
local app = sluice.app()
local SECRET = "]] .. SECRET .. [["

app:view("support", { mask = { { "customer.phone", "phone" }, { "customer.email", "email" },
                               { "card", "redact" } } })
app:view("admin", {})
app:view("customer", {})

-- browser-style: the token in a cookie or the query, CORS for the web app
app:stream("/orders/:user", function(req, s)
  if req.claims.sub ~= req.params.user and req.claims.role ~= "admin" and req.claims.role ~= "support" then
    return sluice.reject(403)
  end
  s:subscribe("orders." .. req.params.user, { view = req.claims.role })
end, {
  auth = { algs = { "HS256" }, secret = SECRET, from = { "cookie", "query" }, aud = "orders" },
  cors = { origins = { "https://app.example.com" }, credentials = true, reject = true },
})

app:post("/orders/:user", function(req)
  local id, n = sluice.publish("orders." .. req.params.user, { event = "order", data = req.body })
  return 202, { id = id, subscribers = n }
end)

-- the rollout: main variant here, the candidate in feed-green.lua
app:stream("/feed", function(req, s)
  s:send { event = "hello", data = "stable:" .. req.variant }
end, { rollout = { header = "X-Traffic-Color", variants = { "stable", "green" },
                   split = { green = 0 }, key = function(req) return req.query.user end } })

app:get("/split", {
  stable = function(req) return 200, "stable" end,
  green = function(req) return 200, "green" end,
}, { rollout = { variants = { "stable", "green" }, split = { green = 50 }, salt = "split-spec",
                 key = function(req) return req.query.user end } })

app:get("/policy-stats", function() return 200, sluice.stats().runtime end)
app:get("/metrics", function() return 200, sluice.metrics() end)
return app
]]

local GREEN = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/feed", function(req, s)
  s:send { event = "hello", data = "green:" .. req.variant }
end, { variant = "green" })
return app
]]

local function token(claims)
  claims.aud = claims.aud or "orders"
  claims.exp = claims.exp or (os.time() + 3600)
  return jwt.sign(claims, { alg = "HS256", secret = SECRET })
end

describe("policy toolkit", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["main.lua"] = MAIN, ["feed-green.lua"] = GREEN } }
  end)
  teardown(function() srv:stop() end)

  describe("authorization", function()
    it("accepts a stream authorized by a cookie", function()
      local s = client.stream(srv.port, "/orders/42",
        { Cookie = "theme=dark; access_token=" .. token { sub = "42", role = "customer" } })
      assert.equal(200, s.status)
      s:close()
    end)

    it("accepts a stream authorized by a query token", function()
      local s = client.stream(srv.port, "/orders/42?access_token=" .. token { sub = "42", role = "customer" })
      assert.equal(200, s.status)
      s:close()
    end)

    it("answers 401 with WWW-Authenticate without a token, and never says why", function()
      local r = client.request(srv.port, "GET", "/orders/42")
      assert.equal(401, r.status)
      assert.matches('^Bearer realm="sluice"', r.headers["www-authenticate"])
      local bad = client.request(srv.port, "GET", "/orders/42?access_token=" .. token { sub = "42", aud = "other" })
      assert.equal(401, bad.status)
      assert.matches('error="invalid_token"', bad.headers["www-authenticate"])
      assert.not_matches("audience", bad.body)
      assert.is_true(srv:wait_log("authorization refused %(wrong_audience%)", 2))
    end)

    it("refuses an expired token and a tampered one", function()
      local expired = token { sub = "42", exp = os.time() - 10 }
      assert.equal(401, client.request(srv.port, "GET", "/orders/42?access_token=" .. expired).status)
      local t = token { sub = "42" }
      local tampered = t:sub(1, -3) .. (t:sub(-2, -2) == "A" and "B" or "A") .. t:sub(-1)
      assert.equal(401, client.request(srv.port, "GET", "/orders/42?access_token=" .. tampered).status)
    end)

    it("lets the handler answer 403 for a valid token without the right", function()
      local r = client.request(srv.port, "GET", "/orders/42?access_token=" .. token { sub = "7", role = "customer" })
      assert.equal(403, r.status)
    end)

    it("counts failures per route and reason", function()
      local r = client.request(srv.port, "GET", "/policy-stats")
      local stats = json.decode(r.body)
      local route
      for _, x in ipairs(stats.routes) do
        if x.pattern == "/orders/:user" and x.method == "GET" then route = x end
      end
      assert.is_truthy(route)
      assert.is_true((route.auth_failures.no_token or 0) >= 1)
      assert.is_true((route.auth_failures.expired or 0) >= 1)
      assert.is_true((route.rejected["401"] or 0) >= 3)
    end)

    it("closes a stream when its token expires, with a retry hint", function()
      local s = client.stream(srv.port, "/orders/42?access_token=" .. token { sub = "42", exp = os.time() + 2 })
      assert.equal(200, s.status)
      assert.is_nil(s:next_event(5))
      assert.is_true(s.ended, "the stream should have ended when the token expired")
      assert.equal(1000, s.retry)
      s:close()
    end)
  end)

  describe("CORS", function()
    it("answers a preflight for an allowed origin", function()
      local r = client.request(srv.port, "OPTIONS", "/orders/42", {
        Origin = "https://app.example.com", ["Access-Control-Request-Method"] = "GET",
        ["Access-Control-Request-Headers"] = "Last-Event-ID" })
      assert.equal(204, r.status)
      assert.equal("https://app.example.com", r.headers["access-control-allow-origin"])
      assert.equal("true", r.headers["access-control-allow-credentials"])
      assert.matches("GET", r.headers["access-control-allow-methods"])
      assert.matches("Origin", r.headers.vary)
    end)

    it("adds CORS headers to the stream, and refuses another origin", function()
      local s = client.stream(srv.port, "/orders/42?access_token=" .. token { sub = "42" },
                              { Origin = "https://app.example.com" })
      assert.equal(200, s.status)
      assert.equal("https://app.example.com", s.headers["access-control-allow-origin"])
      assert.equal("true", s.headers["access-control-allow-credentials"])
      s:close()
      local r = client.request(srv.port, "GET", "/orders/42?access_token=" .. token { sub = "42" },
                               { Origin = "https://evil.example.net" })
      assert.equal(403, r.status)
      assert.is_nil(r.headers["access-control-allow-origin"])
    end)
  end)

  describe("masking per view", function()
    it("gives two roles on one channel differently masked payloads", function()
      local support = client.stream(srv.port, "/orders/42?access_token=" .. token { sub = "s1", role = "support" })
      local admin = client.stream(srv.port, "/orders/42?access_token=" .. token { sub = "a1", role = "admin" })
      assert.equal(200, support.status)
      assert.equal(200, admin.status)
      local payload = json.encode { customer = { phone = "13812345678", email = "jane@example.com" },
                                    card = "4111111111111111", total = 12 }
      local r = client.request(srv.port, "POST", "/orders/42", {}, payload)
      assert.matches('"subscribers":2', r.body)
      local a = json.decode(admin:next_event(3).data)
      local s = json.decode(support:next_event(3).data)
      assert.equal("13812345678", a.customer.phone)
      assert.equal("4111111111111111", a.card)
      assert.equal("138****5678", s.customer.phone)
      assert.equal("j***@example.com", s.customer.email)
      assert.not_equal("4111111111111111", s.card)
      assert.equal(12, s.total)
      support:close()
      admin:close()
    end)
  end)

  describe("variants", function()
    it("serves the candidate variant when the override header asks for it", function()
      local s = client.stream(srv.port, "/feed", { ["X-Traffic-Color"] = "green" })
      assert.equal("green", s.headers["x-variant"])
      assert.equal("green:green", s:next_event(3).data)
      s:close()
    end)

    it("falls back to the default for an unknown colour and without a header", function()
      local s = client.stream(srv.port, "/feed", { ["X-Traffic-Color"] = "purple" })
      assert.equal("stable", s.headers["x-variant"])
      assert.equal("stable:stable", s:next_event(3).data)
      s:close()
    end)

    it("keeps a key on the same variant and splits keys near the configured share", function()
      local green = 0
      for i = 1, 200 do
        local r = client.request(srv.port, "GET", "/split?user=u" .. i)
        local again = client.request(srv.port, "GET", "/split?user=u" .. i)
        assert.equal(r.body, again.body)
        assert.equal(r.body, r.headers["x-variant"])
        if r.body == "green" then green = green + 1 end
      end
      -- 200 keys at 50%: well inside 25%..75% unless the split is broken
      assert.is_true(green > 50 and green < 150, "green share " .. green .. "/200")
      -- and the split can be watched from a scraper
      local m = client.request(srv.port, "GET", "/metrics").body
      local served = tonumber(m:match('sluice_route_variant_total{method="GET",route="/split",variant="green"} (%d+)'))
      assert.equal(green * 2, served)
    end)
  end)
end)
