-- The candidate: same route, its own file. It adds a summary view of the
-- feed; the rollout in feed.lua decides who gets it.
local sluice = require "sluice"
local app = sluice.app()

app:view("summary", { transform = function(data) return data:gsub('"at"', '"time"') end })

app:stream("/feed", function(req, s)
  s:subscribe("feed", { view = "summary" })
  s:send { event = "hello", data = "you are on the green variant" }
end, { variant = "green" })

return app
