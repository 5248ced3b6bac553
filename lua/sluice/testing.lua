-- sluice.testing: the test kit for sluice apps, for busted specs under
-- LuaJIT (`sluice test [DIR]` runs them with this on the path).
--
--   local testing = require "sluice.testing"
--
-- Real server (integration tests):
--   local srv = testing.server{ apps = "." or { ["app.lua"] = src },
--                               env = { JWT_SECRET = "..." },
--                               args = { "--heartbeat", "1" }, bin = "./sluice" }
--   local r = srv:request{ method = "POST", path = "/orders/42/events",
--                          headers = {...}, cookies = {...}, query = {...},
--                          body = "text" or { json = "table" } }
--   r.status, r.headers["content-type"], r.body, r.json
--   local s = srv:stream("/orders/42", { headers =, cookies =, query =, last_event_id = })
--   s.status, s.headers, s.refused, s.body      -- a refusal: its status and body
--   s:next(timeout) -> { event, data, id, last_event_id } | nil, "timeout" | "ended"
--   s:events_until(n or fn(ev), timeout), s.comments, s.retry, s.received
--   s:reconnect() (sends Last-Event-ID), s:close()
--   srv:log(), srv:wait_log(pattern), srv:write_app(name, src), srv:reload(), srv:stop()
--   Under busted the server log is printed when a test that used the
--   server fails; srv:guard(fn) appends it to the error anywhere else.
--
-- Helpers (no server needed):
--   testing.jwt{ alg = "HS256", secret = "...", claims = {...}, expires_in = 60 }
--   testing.jwt{ alg = "RS256" | "ES256", key = testing.keypair("RS256"), claims = {...} }
--   testing.keypair(alg) -> { private = PEM, public = PEM }
--   testing.variant(rollout_opts, "alice")                       -- by key
--   testing.variant(rollout_opts, { headers = { ["X-Traffic-Color"] = "green" },
--                                   query = {...}, claims = {...}, remote_addr = "..." })
--     -> variant, reason ("header" | "split" | "default"), bucket
--   testing.sse.parse(text) -> events, parser   (the EventSource rules)
--
-- In-process (no sockets, no server process; the server's own code built
-- into a Lua C module, see sluice.testing.app):
--   local app = testing.app{ apps = "." or { ["app.lua"] = src }, env = {...},
--                            options = { heartbeat = 15, history_len = 1000 } }
--   app:request{...}, app:get, app:post, app:stream(path, opts): as above;
--     s.channels, s.views (channel -> view name), s:events(), and next()
--     never waits: events are there when the call that caused them returns
--   app:publish(channel, { event =, data = }) -> id, reached
--   app:advance(seconds): timers and token expiry fire at their time
--   app:now(), app:reload(), app:write_app(name, src), app:log(), app:close()
local server = require "sluice.testing.server"
local inprocess = require "sluice.testing.app"
local tokens = require "sluice.testing.tokens"
local sse = require "sluice.testing.sse"
local http = require "sluice.testing.http"
local rollout = require "sluice.rollout"

local M = {
  sse = sse,
  http = http,
  ROOT = server.ROOT,
}

function M.server(opts)
  return server.start(opts)
end

-- The in-process mode: one app at a time (a new one closes the last).
function M.app(opts)
  return inprocess.new(opts)
end

M.stop_all = server.stop_all
M.jwt = tokens.jwt
M.keypair = tokens.keypair
M.bin = server.default_bin

-- A request-like table for rollout:choose: header names lower-cased, as
-- the server's req.headers looks them up.
local function fake_request(t)
  local req = {}
  for k, v in pairs(t) do req[k] = v end
  local headers = {}
  for k, v in pairs(t.headers or {}) do headers[string.lower(k)] = v end
  req.headers = headers
  req.query = t.query or {}
  req.params = t.params or {}
  req.cookies = t.cookies or {}
  req.remote_addr = t.remote_addr or "127.0.0.1"
  return req
end

-- Which variant of a route a key, or a request, gets: the real
-- sluice.rollout with the route's rollout options.
function M.variant(spec, who)
  if type(spec) ~= "table" then error("testing.variant(rollout_opts, key | request)", 2) end
  if type(who) == "string" or type(who) == "number" then
    -- the key itself, whatever spec.key would compute it from
    local copy = {}
    for k, v in pairs(spec) do copy[k] = v end
    copy.key = tostring(who)
    copy.header = nil
    return rollout.new(copy):choose(fake_request {})
  end
  if type(who) ~= "table" then error("testing.variant: a key (string) or a request table", 2) end
  return rollout.new(spec):choose(fake_request(who))
end

-- Runs fn(srv) against a fresh server and always stops it; a failure
-- carries the server log.
function M.with_server(opts, fn)
  local srv = server.start(opts)
  local ok, err = pcall(srv.guard, srv, fn)
  srv:stop()
  if not ok then error(err, 0) end
end

return M
