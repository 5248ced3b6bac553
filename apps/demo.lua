-- The demo app `make run` serves. Try:
--   curl -N http://127.0.0.1:8080/clock
--   curl -N http://127.0.0.1:8080/rooms/lobby        (in one terminal)
--   curl -d 'hello' http://127.0.0.1:8080/rooms/lobby (in another)
--   open http://127.0.0.1:8080/ in a browser
local sluice = require "sluice"
local app = sluice.app()

-- A clock: one event per second to every subscriber of "clock", from one
-- timer, framed once whatever the number of subscribers.
app:every(1, function()
  sluice.publish("clock", { event = "tick", data = os.date("!%Y-%m-%dT%H:%M:%SZ") })
end)

app:stream("/clock", function(req, s)
  s:subscribe("clock")
end)

-- Chat rooms: GET streams a room (resumable with Last-Event-ID), POST says
-- something in it. The answer says how many listeners it reached.
app:stream("/rooms/:room", function(req, s)
  s:subscribe("room." .. req.params.room)
end)

app:post("/rooms/:room", function(req)
  if #req.body == 0 then return 400, "say something\n" end
  if #req.body > 4096 then return 413, "keep it under 4 KiB\n" end
  local id, reached = sluice.publish("room." .. req.params.room,
                                     { event = "message", data = req.body })
  return 202, { id = id, reached = reached }
end)

app:get("/health", function() return 200, "ok\n" end)

app:get("/stats", function() return 200, sluice.stats() end)

-- The same counters for a Prometheus scraper.
app:get("/metrics", function()
  return 200, sluice.metrics(), { ["Content-Type"] = "text/plain; version=0.0.4" }
end)

-- A browser page that listens to the clock and a room.
local page
app:get("/", function()
  if not page then
    local f = io.open((debug.getinfo(1, "S").source:sub(2):gsub("[^/]+$", "")) .. "../examples/browser/index.html")
    page = f and f:read("*a") or "<p>examples/browser/index.html not found</p>"
    if f then f:close() end
  end
  return 200, page, { ["Content-Type"] = "text/html; charset=utf-8" }
end)

return app
