-- Traffic for the /status page check (spec/browser/status.js): a feed with
-- a rollout (stable and canary), a publisher, and a route that fails.
local sluice = require "sluice"
local app = sluice.app()

app:every(0.05, function() sluice.publish("demo", { event = "tick", data = tostring(os.time()) }) end)

app:stream("/demo", function(req, s) s:subscribe("demo") end, {
  rollout = { header = "X-Demo-Variant", variants = { "stable", "canary" }, split = { canary = 25 },
              key = function(req) return req.query.user end, salt = "demo" },
})
app:stream("/demo", function(req, s) s:subscribe("demo") end, { variant = "canary" })

app:get("/demo/fail", function() error("a failing handler, on purpose") end)

return app
