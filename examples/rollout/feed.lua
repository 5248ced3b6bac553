-- The current version of a feed. Its declaration carries the rollout: the
-- X-Traffic-Color header picks a variant outright (testers, canaries);
-- otherwise 10% of users, sticky by user id, get "green".
--
--   ./sluice --apps examples/rollout
--   curl -N -H 'X-Traffic-Color: green' http://127.0.0.1:8080/feed
--   curl -N 'http://127.0.0.1:8080/feed?user=alice'      # X-Variant tells which
--
-- Raise the split to 50 in this file and save: the running server reloads
-- it, users already on green stay there, and no stream is dropped.
local sluice = require "sluice"
local app = sluice.app()

app:every(1, function() sluice.publish("feed", { event = "tick", data = { at = os.time() } }) end)

app:stream("/feed", function(req, s)
  s:subscribe("feed")
end, {
  rollout = {
    header = "X-Traffic-Color",
    variants = { "stable", "green" },
    split = { green = 10 },
    key = function(req) return req.query.user end,
    salt = "feed-2026",
  },
})

app:get("/feed/stats", function()
  for _, r in ipairs(sluice.stats().runtime.routes) do
    if r.pattern == "/feed" then return 200, r.served_variants end
  end
  return 404
end)

return app
