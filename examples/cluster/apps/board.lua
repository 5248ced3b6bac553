-- The app both nodes of examples/cluster/run serve: a message board.
-- Every message gets one id from Redis, whichever node took it, and every
-- stream gets every message once, in id order, whichever node it is on.
--
--   GET  /events    the board's stream (resumable with Last-Event-ID); its
--                   first event, "hello", says which node the stream is on
--   POST /publish   the body is the message; answers the node that took it
--                   and the event's id
--   GET  /          a page showing both (index.html beside apps/)
--
-- The run script tells each node its name in SLUICE_NODE ("a" or "b").
local sluice = require "sluice"
local app = sluice.app()

local NODE = os.getenv("SLUICE_NODE") or "?"

app:stream("/events", function(req, s)
  -- No id: a browser keeps its Last-Event-ID across this event.
  s:send { event = "hello", data = { node = NODE } }
  s:subscribe("board")
end)

-- The event's id as text: sluice.publish returns it as a number (ids are
-- below 2^53, but tostring would print them in exponent form). A cluster
-- node that gets its ids from Redis after publish has returned gives
-- `true` instead: then there is no id to show yet, the stream has it.
local function id_text(id)
  if type(id) == "number" and id > 0 then return ("%.0f"):format(id) end
  if type(id) == "string" then return id end
  return nil
end

app:post("/publish", function(req)
  if #req.body == 0 then return 400, "say something\n" end
  if #req.body > 4096 then return 413, "keep it under 4 KiB\n" end
  local id, err = sluice.publish("board", { event = "message",
                                            data = { text = req.body, via = NODE } })
  -- Redis unreachable: nil and an error; the client may try again.
  if not id then return 503, err .. "\n", { ["Retry-After"] = "1" } end
  return 202, { node = NODE, id = id_text(id) }
end)

app:get("/node", function() return 200, NODE .. "\n" end)

local page
app:get("/", function()
  if not page then
    local dir = debug.getinfo(1, "S").source:sub(2):gsub("[^/]+$", "")
    local f = io.open(dir .. "../index.html")
    page = f and f:read("*a") or "<p>examples/cluster/index.html not found</p>"
    if f then f:close() end
  end
  return 200, page, { ["Content-Type"] = "text/html; charset=utf-8" }
end)

return app
