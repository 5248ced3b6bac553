-- Specs of the orders example, written as an app author would, with the
-- sluice test kit. Run them with:
--
--   sluice test examples/orders
--
-- `sluice test` runs busted with this directory as the working directory,
-- so apps = "." serves orders.lua (a copy of it: the project is not touched).
local testing = require "sluice.testing"

local SECRET = "orders-spec-secret-0123456789"

-- A token as the shop's identity provider would mint it.
local function token(sub, role, extra)
  local claims = { sub = sub, role = role, aud = "orders" }
  for k, v in pairs(extra or {}) do claims[k] = v end
  return testing.jwt { alg = "HS256", secret = SECRET, claims = claims, expires_in = 600 }
end

local function bearer(t) return { Authorization = "Bearer " .. t } end

local ORDER = {
  status = "shipped",
  customer = { name = "Jane", phone = "13812345678", email = "jane@example.com" },
  payment = { card = "4111 1111 1111 1111", amount = 42.5 },
}

describe("examples/orders", function()
  local srv
  lazy_setup(function()
    srv = testing.server { apps = ".", env = { JWT_SECRET = SECRET } }
  end)
  lazy_teardown(function() srv:stop() end)

  -- The backend publishes an order update for user 42.
  local function publish(order)
    local r = srv:request { method = "POST", path = "/orders/42/events",
                            headers = bearer(token("billing", "backend")), body = order }
    assert.equal(202, r.status, r.body)
    return r.json.id
  end

  describe("refuses", function()
    it("a stream without a token, with 401 and a Bearer challenge", function()
      local s = srv:stream("/orders/42")
      assert.is_true(s.refused)
      assert.equal(401, s.status)
      assert.matches("^Bearer", s.headers["www-authenticate"])
    end)

    it("a token signed with another secret", function()
      local forged = testing.jwt { secret = "not-the-secret", claims = { sub = "42", aud = "orders" } }
      assert.equal(401, srv:stream("/orders/42", { query = { access_token = forged } }).status)
    end)

    it("a token for another audience", function()
      local t = testing.jwt { secret = SECRET, claims = { sub = "42", aud = "billing" }, expires_in = 600 }
      assert.equal(401, srv:stream("/orders/42", { headers = bearer(t) }).status)
    end)

    it("an expired token", function()
      local t = token("42", "customer", { exp = os.time() - 3600 })
      assert.equal(401, srv:stream("/orders/42", { headers = bearer(t) }).status)
    end)

    it("a customer reading another customer's orders, with 403", function()
      assert.equal(403, srv:stream("/orders/43", { headers = bearer(token("42", "customer")) }).status)
    end)

    it("a customer publishing to another customer's orders, with 403", function()
      local r = srv:request { method = "POST", path = "/orders/43/events",
                              headers = bearer(token("42", "customer")), body = ORDER }
      assert.equal(403, r.status)
    end)

    it("a body that is not JSON, with 400", function()
      local r = srv:request { method = "POST", path = "/orders/42/events",
                              headers = bearer(token("billing", "backend")), body = "not json" }
      assert.equal(400, r.status)
    end)
  end)

  describe("takes the token from", function()
    for _, case in ipairs {
      { "the Authorization header", function(t) return { headers = bearer(t) } end },
      { "a cookie", function(t) return { cookies = { access_token = t } } end },
      { "the query (EventSource cannot set headers)", function(t) return { query = { access_token = t } } end },
    } do
      it(case[1], function()
        local s = srv:stream("/orders/42", case[2](token("42", "customer")))
        assert.equal(200, s.status)
        s:close()
      end)
    end
  end)

  describe("masks per role", function()
    it("the owner sees the raw order", function()
      local s = srv:stream("/orders/42", { headers = bearer(token("42", "customer")) })
      assert.equal(200, s.status)
      publish(ORDER)
      local ev = assert(s:next(3), "no order event")
      assert.equal("order", ev.event)
      assert.same(ORDER, require("cjson").decode(ev.data))
      s:close()
    end)

    it("support staff see the phone, the email and the card masked", function()
      local s = srv:stream("/orders/42", { headers = bearer(token("agent-7", "support")) })
      assert.equal(200, s.status)
      publish(ORDER)
      local ev = assert(s:next(3), "no order event")
      local order = require("cjson").decode(ev.data)
      assert.equal("138****5678", order.customer.phone)
      assert.equal("j***@example.com", order.customer.email)
      assert.equal("[redacted]", order.payment.card)
      -- what is not sensitive is untouched
      assert.equal("shipped", order.status)
      assert.equal(42.5, order.payment.amount)
      s:close()
    end)

    it("one event, both views at once", function()
      local owner = srv:stream("/orders/42", { headers = bearer(token("42", "customer")) })
      local support = srv:stream("/orders/42", { headers = bearer(token("agent-7", "support")) })
      local id = publish(ORDER)
      local a, b = assert(owner:next(3)), assert(support:next(3))
      assert.equal(id, a.id)
      assert.equal(id, b.id)
      assert.matches("13812345678", a.data, 1, true)
      assert.not_matches("13812345678", b.data, 1, true)
      owner:close()
      support:close()
    end)
  end)

  it("resumes a phone that slept: missed updates come back with Last-Event-ID", function()
    local s = srv:stream("/orders/42", { headers = bearer(token("42", "customer")) })
    publish { status = "paid" }
    assert.equal("paid", require("cjson").decode(assert(s:next(3)).data).status)
    s:close()
    publish { status = "packed" }
    publish { status = "shipped" }
    s:reconnect()
    assert.equal(200, s.status)
    local missed = s:events_until(2, 3)
    assert.equal(2, #missed)
    assert.equal("packed", require("cjson").decode(missed[1].data).status)
    assert.equal("shipped", require("cjson").decode(missed[2].data).status)
    s:close()
  end)

  it("lets the shop's page read the stream cross-origin with its cookie", function()
    local s = srv:stream("/orders/42", { headers = { Origin = "https://shop.example.com" },
                                        cookies = { access_token = token("42", "customer") } })
    assert.equal(200, s.status)
    assert.equal("https://shop.example.com", s.headers["access-control-allow-origin"])
    assert.equal("true", s.headers["access-control-allow-credentials"])
    s:close()
  end)
end)
