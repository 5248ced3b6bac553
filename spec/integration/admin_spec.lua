-- The admin listener (--admin-listen): /healthz, /readyz, /metrics and
-- /status on a socket of its own, answered on the process's main loop:
-- probes answer while the workers are flooded, /readyz says 503 while
-- draining, the metrics move with traffic and pass promtool.
local server = require "server"
local http = require "sluice.testing.http"
local raw = require "raw"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/hello", function() return "hello" end)
app:get("/boom", function() error("boom on purpose") end)
app:get("/spin", function() while true do end end)
app:stream("/events/:ch", function(req, s) s:subscribe("c." .. req.params.ch) end)
app:post("/pub/:ch", function(req)
  sluice.publish("c." .. req.params.ch, req.body)
  return 204
end)
-- A burst of large events in one call: keeps a worker busy.
app:post("/flood", function(req)
  local big = string.rep("x", 4096)
  for _ = 1, 400 do sluice.publish("c.flood", big) end
  return 204
end)
return app
]]

local ROLLOUT = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/ab", function() return "main" end,
        { rollout = { header = "X-Variant-Wanted", variants = { "stable", "canary" } } })
app:get("/ab", function() return "canary" end, { variant = "canary" })
return app
]]

local admin = require "admin"
local admin_port, admin_get, sample = admin.port, admin.get, admin.sample

local function start(extra)
  local args = { "--admin-listen", "127.0.0.1:0" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return server.start { apps = { ["app.lua"] = APP }, args = args }
end

describe("the admin listener", function()
  local srv
  after_each(function()
    if srv then srv:stop() end
    srv = nil
  end)

  it("answers /healthz and /readyz on its own port; the public port 404s them", function()
    srv = start()
    local port = admin_port(srv)
    assert.are_not.equal(srv.port, port)
    local h = admin_get(port, "/healthz")
    assert.are.equal(200, h.status)
    assert.are.equal("ok\n", h.body)
    local r = raw.eventually(function()
      local x = admin_get(port, "/readyz")
      return x.status == 200 and x
    end, 5)
    assert.truthy(r, "readyz never 200")
    assert.are.equal("ready\n", r.body)
    assert.are.equal(404, srv:get("/metrics").status)
    assert.are.equal(404, srv:get("/healthz").status)
    assert.are.equal(404, admin_get(port, "/nothing").status)
    local m = admin_get(port, "/metrics")
    assert.are.equal(200, m.status)
    assert.truthy(m.headers["content-type"]:find("text/plain; version=0.0.4", 1, true))
  end)

  it("is off by default", function()
    srv = server.start { apps = { ["app.lua"] = APP } }
    assert.falsy(srv:log():find("admin endpoints", 1, true))
  end)

  it("counts traffic: requests per route, streams, closes, resumes, latency, errors and CPU budget stops, reloads", function()
    srv = start({ "--lua-cpu-budget", "50" })
    local port = admin_port(srv)
    local before = admin_get(port, "/metrics").body
    assert.are.equal(0, sample(before, "sluice_publish_to_written_seconds_count"))

    assert.are.equal(200, srv:get("/hello").status)
    assert.are.equal(200, srv:get("/hello").status)
    assert.are.equal(404, srv:get("/no/such/route").status)
    assert.are.equal(500, srv:get("/boom").status)
    assert.are.equal(500, srv:get("/spin").status)

    local s1 = srv:stream("/events/a")
    local s2 = srv:stream("/events/a")
    for i = 1, 5 do assert.are.equal(204, srv:post("/pub/a", "e" .. i).status) end
    assert.are.equal(5, #s1:events_until(5, 5))
    assert.are.equal(5, #s2:events_until(5, 5))

    local mid = admin_get(port, "/metrics").body
    assert.are.equal(2, sample(mid, 'sluice_route_streams{route="/events/:ch",variant="stable"}'))
    assert.are.equal(2, sample(mid, "sluice_streams"))
    s2:close()
    -- A resume that gets exactly what it missed.
    local s3 = srv:stream("/events/a", { headers = { ["Last-Event-ID"] = s1.received[2].id } })
    assert.are.equal(3, #s3:events_until(3, 5))
    s3:close()

    srv:write_app("broken.lua", "this is not lua")
    assert.truthy(srv:reload())
    srv:remove_app("broken.lua")
    assert.truthy(srv:reload())

    local text
    raw.eventually(function()
      text = admin_get(port, "/metrics").body
      return sample(text, 'sluice_stream_closes_total{reason="client_gone"}') == 2
    end, 5)
    assert.are.equal(2, sample(text, 'sluice_route_variant_requests_total{route="/hello",variant="stable"}'))
    assert.are.equal(1, sample(text, 'sluice_route_variant_requests_total{route="none",variant="none"}'))
    assert.are.equal(5, sample(text, 'sluice_route_variant_requests_total{route="/pub/:ch",variant="stable"}'))
    assert.are.equal(2, sample(text, 'sluice_request_duration_seconds_count{route="/hello"}'))
    assert.are.equal(1, sample(text, 'sluice_route_streams{route="/events/:ch",variant="stable"}'))
    assert.are.equal(2, sample(text, 'sluice_stream_closes_total{reason="client_gone"}'))
    assert.are.equal(2, sample(text, "sluice_stream_lifetime_seconds_count"))
    assert.are.equal(1, sample(text, 'sluice_resumes_total{result="exact"}'))
    assert.are.equal(0, sample(text, 'sluice_resumes_total{result="reset"}'))
    -- 5 events to 2 streams, 3 replayed events not counted (not published then).
    assert.are.equal(10, sample(text, "sluice_publish_to_written_seconds_count"))
    assert.are.equal(10, sample(text, 'sluice_publish_to_written_seconds_bucket{le="+Inf"}'))
    assert.are.equal(5, sample(text, "sluice_published_total"))
    assert.are.equal(1, sample(text, 'sluice_app_reloads_total{result="ok"}'))
    assert.are.equal(1, sample(text, 'sluice_app_reloads_total{result="failed"}'))
    assert.are.equal(1, sample(text, "sluice_lua_cpu_budget_stops_total"))
    assert.is_true(sample(text, "sluice_lua_errors_total") >= 2)   -- boom, spin (and the load error)
    assert.are.equal(1, sample(text, 'sluice_worker_streams{worker="0"}'))
    -- Never a channel name in a label.
    assert.falsy(text:find("c.a", 1, true))
    s1:close()
  end)

  it("labels requests by variant for a rollout", function()
    srv = server.start { apps = { ["ab.lua"] = ROLLOUT }, args = { "--admin-listen", "127.0.0.1:0" } }
    local port = admin_port(srv)
    for _ = 1, 3 do assert.are.equal("main", srv:get("/ab").body) end
    assert.are.equal("canary", srv:get("/ab", { headers = { ["X-Variant-Wanted"] = "canary" } }).body)
    local text = admin_get(port, "/metrics").body
    assert.are.equal(1, sample(text, 'sluice_route_variant_requests_total{route="/ab",variant="canary"}'),
                     text)
    assert.are.equal(3, sample(text, 'sluice_route_variant_requests_total{route="/ab",variant="stable"}'))
  end)

  it("passes promtool check metrics after traffic", function()
    assert.truthy(os.execute("command -v promtool >/dev/null 2>&1") == 0,
                  "promtool is missing: make deps installs Debian's prometheus package")
    srv = start({ "--workers", "2" })
    local port = admin_port(srv)
    local s = srv:stream("/events/p")
    for i = 1, 3 do srv:post("/pub/p", "x" .. i) end
    s:events_until(3, 5)
    srv:get("/hello")
    srv:get("/nowhere")
    srv:get("/boom")
    srv:write_app("extra.lua", 'local a = require("sluice").app() a:get("/x", function() return 1 end) return a')
    assert.truthy(srv:reload())
    srv:get("/x")
    s:close()
    local text = admin_get(port, "/metrics").body
    local path = srv.dir .. "/metrics.txt"
    server.write_file(path, text)
    local out = server.sh(("promtool check metrics < %s 2>&1; echo rc=$?"):format(path))
    assert.truthy(out:find("rc=0", 1, true), out)
    -- promtool's lint prints problems even when it exits 0 with warnings.
    assert.are.equal("rc=0", (out:gsub("%s+$", "")), out)
    -- The Grafana dashboard asks only for series the server exports.
    local ROOT = os.getenv("SLUICE_ROOT") or "."
    local dash = server.read_file(ROOT .. "/examples/deploy/grafana-sluice.json")
    assert.truthy(require("sluice.json").decode(dash).panels)
    local n = 0
    for name in dash:gmatch("sluice_[%a_]+") do
      n = n + 1
      -- A sample, or the family declared (quota refusals: no quota route here).
      local family = name:gsub("_bucket$", "")
      assert.truthy(text:find("\n" .. name .. "[{ ]") or text:find("# TYPE " .. family .. " ", 1, true),
                    "not exported: " .. name)
    end
    assert.is_true(n > 15)
  end)

  it("says 503 on /readyz while draining, and /healthz stays 200", function()
    srv = start({ "--shutdown-grace", "20", "--send-timeout", "30", "--max-queued-bytes", "100000000" })
    local port = admin_port(srv)
    -- A subscriber that reads nothing, with more queued than its socket
    -- takes: its goodbye cannot be written, so the drain lasts.
    local s = assert(raw.connect(srv.port))
    assert(s:send(raw.request("GET", "/events/flood")))
    assert.truthy(raw.eventually(function()
      return sample(admin_get(port, "/metrics").body, "sluice_streams") == 1
    end, 5))
    assert.truthy(raw.eventually(function()
      assert.are.equal(204, srv:post("/flood", "").status)
      -- More than loopback socket buffers can take (they grow to megabytes).
      return sample(admin_get(port, "/metrics").body, "sluice_queued_bytes") > 12e6
    end, 20, 0.01), "nothing stayed queued")
    assert.are.equal(200, admin_get(port, "/readyz").status)
    srv:signal("TERM")
    local r = raw.eventually(function()
      local x = admin_get(port, "/readyz")
      return x.status == 503 and x
    end, 5)
    assert.truthy(r, "readyz never said 503 while draining")
    assert.are.equal("draining\n", r.body)
    assert.are.equal(200, admin_get(port, "/healthz").status)
    assert.truthy(srv:running())
    s:close()
    assert.truthy(srv:wait_exit(10))
  end)

  it("answers probes promptly while a flood of streams and publishes is on", function()
    srv = start({ "--workers", "1", "--max-queued-bytes", "100000000" })
    local port = admin_port(srv)
    -- 200 subscribers that never read: every event is queued and written
    -- as far as their sockets take, the rest stays queued.
    local subs = {}
    for i = 1, 200 do
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/events/flood")))
      subs[i] = c
    end
    assert.truthy(raw.eventually(function()
      return sample(admin_get(port, "/metrics").body, "sluice_streams") == 200
    end, 10))
    -- Publishers in the background: 400 x 4 KiB events per request, 200 streams.
    local stop = srv.dir .. "/stop"
    server.sh(("(for i in $(seq 40); do [ -e %s ] && break; curl -s -m 20 -X POST http://127.0.0.1:%d/flood; done) >/dev/null 2>&1 &")
              :format(stop, srv.port))
    assert.truthy(raw.eventually(function()
      return (sample(admin_get(port, "/metrics").body, "sluice_queued_bytes") or 0) > 1e6
    end, 10), "the flood never queued output")
    local worst = 0
    for _ = 1, 10 do
      for _, path in ipairs({ "/healthz", "/readyz", "/metrics" }) do
        local t0 = socket.gettime()
        local r = admin_get(port, path, 5)
        local took = socket.gettime() - t0
        assert.are.equal(200, r.status)
        if took > worst then worst = took end
      end
      socket.sleep(0.05)
    end
    server.write_file(stop, "")
    assert.is_true(worst < 1, ("a probe took %.3f s"):format(worst))
    for _, c in ipairs(subs) do c:close() end
  end)
end)

describe("the status page", function()
  local srv
  after_each(function()
    if srv then srv:stop() end
    srv = nil
  end)

  it("is one self-contained page and its figures come as SSE once a second", function()
    srv = start()
    local port = admin_port(srv)
    local page = admin_get(port, "/status")
    assert.are.equal(200, page.status)
    assert.truthy(page.headers["content-type"]:find("text/html", 1, true))
    assert.truthy(page.body:find("/status/events", 1, true))
    -- No external asset: nothing fetched from anywhere but this listener.
    assert.falsy(page.body:find("src=", 1, true))
    assert.falsy(page.body:find("href=", 1, true))
    assert.falsy(page.body:find("http", 1, true))
    srv:get("/boom")
    local s = http.stream("127.0.0.1", port, "/status/events")
    local evs = s:events_until(2, 5)
    assert.are.equal(2, #evs)
    assert.are.equal("status", evs[1].event)
    local json = require "sluice.json"
    local a, b = json.decode(evs[1].data), json.decode(evs[2].data)
    assert.is_true(b.time - a.time >= 0.5)
    assert.are.equal(1, a.lua_errors)
    assert.are.equal("script_error", a.recent[1].kind)
    assert.truthy(a.recent[1].text:find("boom on purpose", 1, true))
    assert.are.equal(json.null, a.shedding)
    assert.are.equal(0, a.shed_refused)
    assert.are.equal(0, a.quota_refused)
    assert.truthy(page.body:find("s.shedding", 1, true))
    s:close()
  end)

  it("says whether it is shedding, and counts the streams refused", function()
    srv = start({ "--max-streams", "1" })
    local port = admin_port(srv)
    local open = srv:stream("/events/x")
    assert.truthy(raw.eventually(function()
      return sample(admin_get(port, "/metrics").body, "sluice_streams") == 1
    end, 5))
    assert.are.equal(503, srv:get("/events/y").status)
    local s = http.stream("127.0.0.1", port, "/status/events")
    local a = require("sluice.json").decode(s:events_until(1, 5)[1].data)
    assert.are.equal("streams", a.shedding)
    assert.are.equal(1, a.shed_refused)
    s:close()
    open:close()
  end)
end)
