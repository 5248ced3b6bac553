-- App served by `bench/run`: the routes the load generator drives.
local sluice = require "sluice"
local app = sluice.app()

-- SSE subscription: stream subscribed to one channel
app:stream("/sub/:ch", function(req, s) s:subscribe(req.params.ch) end)

-- same, behind a Lua authorization check (churn-auth measures its cost)
app:stream("/sub-auth/:ch", function(req, s)
  if req.query.token ~= "let-me-in" then return sluice.reject(401) end
  s:subscribe(req.params.ch)
end)

-- publish: the body becomes the event data verbatim
app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { data = req.body })
  return 202, { id = id, subscribers = n }
end)

return app
