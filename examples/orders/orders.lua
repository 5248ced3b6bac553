-- Order updates for customers and support staff: a JWT from a cookie or
-- the query (browsers' EventSource cannot set headers), CORS for the web
-- app, and a masked view for support staff.
--
--   JWT_SECRET=change-me ./sluice --apps examples/orders
--   TOKEN=$(JWT_SECRET=change-me luajit examples/token.lua 42 customer)
--   curl -N "http://127.0.0.1:8080/orders/42?access_token=$TOKEN"
--   curl -d '{"status":"shipped","customer":{"phone":"13812345678"}}' \
--        -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/orders/42/events
local sluice = require "sluice"
local app = sluice.app()

local auth = {
  algs = { "HS256" },
  secret = sluice.env("JWT_SECRET", "change-me"),
  from = { "header", "cookie", "query" },
  aud = "orders",
  leeway = 30,
}

app:view("support", { mask = { { "customer.phone", "phone" },
                                { "customer.email", "email" },
                                { "payment.card", "redact" } } })
app:view("owner", {})

-- A day of history per order channel, so a phone that slept resumes.
app:history("orders.", { size = 500, ttl = 86400 })

app:stream("/orders/:user", function(req, s)
  local role = req.claims.role
  if req.claims.sub ~= req.params.user and role ~= "support" then
    return sluice.reject(403)
  end
  s:subscribe("orders." .. req.params.user, { view = role == "support" and "support" or "owner" })
  s:reset_event("resync")   -- the page refetches the order list on this
end, { auth = auth, cors = { origins = { "https://shop.example.com" }, credentials = true } })

app:post("/orders/:user/events", function(req)
  if req.claims.sub ~= req.params.user and req.claims.role ~= "backend" then
    return sluice.reject(403)
  end
  local order, err = sluice.json.decode(req.body)
  if not order then return 400, "the body must be JSON: " .. err .. "\n" end
  local id, reached = sluice.publish("orders." .. req.params.user, { event = "order", data = order })
  return 202, { id = id, reached = reached }
end, { auth = auth })

return app
