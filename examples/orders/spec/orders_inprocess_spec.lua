-- The orders example in-process: the same server code, no sockets, no
-- server process, and a clock the spec moves. Run with the others:
--
--   sluice test examples/orders
local testing = require "sluice.testing"
local cjson = require "cjson"

local SECRET = "orders-spec-secret-0123456789"

local function token(sub, role, expires_in)
  return testing.jwt { alg = "HS256", secret = SECRET, expires_in = expires_in or 600,
                       claims = { sub = sub, role = role, aud = "orders" } }
end

local function bearer(t) return { Authorization = "Bearer " .. t } end

local ORDER = {
  status = "shipped",
  customer = { name = "Jane", phone = "13812345678", email = "jane@example.com" },
  payment = { card = "4111 1111 1111 1111", amount = 42.5 },
}

describe("examples/orders, in-process", function()
  local app
  before_each(function() app = testing.app { apps = ".", env = { JWT_SECRET = SECRET } } end)
  after_each(function() app:close() end)

  describe("refuses", function()
    it("a stream without a token, with a forged one, or for another user", function()
      assert.equal(401, app:stream("/orders/42").status)
      assert.equal(401, app:stream("/orders/42", { headers = bearer(token("42") .. "x") }).status)
      local other = app:stream("/orders/43", { headers = bearer(token("42", "customer")) })
      assert.is_true(other.refused)
      assert.equal(403, other.status)
    end)

    it("a customer publishing to another customer's orders", function()
      local r = app:post("/orders/43/events", ORDER, { headers = bearer(token("42", "customer")) })
      assert.equal(403, r.status)
    end)
  end)

  describe("one event, two views", function()
    it("masks the phone, email and card for support; the owner sees them", function()
      local owner = app:stream("/orders/42", { cookies = { access_token = token("42", "customer") } })
      local support = app:stream("/orders/42", { headers = bearer(token("agent-7", "support")) })
      assert.same({ "orders.42" }, support.channels)
      assert.equal("support", support.views["orders.42"])
      assert.equal("raw", owner.views["orders.42"])   -- the owner view has no rules

      local r = app:post("/orders/42/events", ORDER, { headers = bearer(token("billing", "backend")) })
      assert.equal(202, r.status)
      assert.equal(2, r.json.reached)

      local seen = cjson.decode(assert(support:next()).data)
      assert.equal("138****5678", seen.customer.phone)
      assert.not_equal(ORDER.customer.email, seen.customer.email)
      assert.not_equal(ORDER.payment.card, seen.payment.card)
      local mine = cjson.decode(assert(owner:next()).data)
      assert.equal("13812345678", mine.customer.phone)
      assert.is_nil(owner:next())   -- nothing else was sent
    end)

    it("delivers what the test publishes itself through the same views", function()
      local support = app:stream("/orders/42", { headers = bearer(token("agent-7", "support")) })
      local id, reached = app:publish("orders.42", { event = "order", data = ORDER })
      assert.equal(1, reached)
      local ev = assert(support:next())
      assert.same({ "order", id }, { ev.event, ev.id })
      assert.equal("138****5678", cjson.decode(ev.data).customer.phone)
    end)
  end)

  describe("the clock", function()
    it("ends a stream when its token expires, with a retry hint", function()
      local s = app:stream("/orders/42", { headers = bearer(token("42", "customer", 60)) })
      app:advance(59)
      assert.is_false(s:wait_closed())
      app:advance(2)
      assert.is_true(s:wait_closed())
      assert.equal(1000, s.retry)
      assert.equal(" token expired", s.comments[#s.comments])
    end)

    it("resumes from history within its day, and says resync after it", function()
      local backend = bearer(token("billing", "backend"))
      local s = app:stream("/orders/42", { headers = bearer(token("42", "customer", 7 * 86400)) })
      app:post("/orders/42/events", { status = "paid" }, { headers = backend })
      local last = assert(s:next()).id
      s:close()
      app:post("/orders/42/events", { status = "shipped" }, { headers = backend })
      local back = app:stream("/orders/42", { headers = bearer(token("42", "customer")), last_event_id = last })
      assert.equal("shipped", cjson.decode(assert(back:next()).data).status)
      back:close()
      app:advance(86401)   -- the history's ttl
      local late = app:stream("/orders/42", { headers = bearer(token("42", "customer", 7 * 86400)),
                                              last_event_id = last })
      assert.equal("resync", assert(late:next()).event)
    end)
  end)
end)
