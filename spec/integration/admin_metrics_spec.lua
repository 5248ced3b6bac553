-- The figures of quotas, load shedding and admin disconnects on the admin
-- listener's /metrics (core/metrics.c), and sluice.metrics() served by an
-- app: the same C-side text plus the Lua-only families, passing promtool.
local server = require "server"
local client = require "client"
local pinned = require "pinned"
local http = require "sluice.testing.http"
local raw = require "raw"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/who", function() return 200, tostring(sluice.worker_id()) end)
app:stream("/feed", function(req, s) s:subscribe("feed") end)
app:stream("/tenant", function(req, s) s:subscribe("t") end,
           { quota = { key = "tenant:X-Tenant-ID", streams = 1 } })
app:stream("/tagged", function(req, s) s:tag("user", req.query.user) end)
app:post("/revoke", function(req) return 200, tostring(sluice.disconnect { user = req.query.user }) end)
app:get("/boom", function() error("boom on purpose") end)
app:get("/spin", function() while true do end end)
app:get("/metrics", function()
  return 200, sluice.metrics(), { ["Content-Type"] = "text/plain; version=0.0.4" }
end)
return app
]]

local admin = require "admin"
local admin_port, sample = admin.port, admin.sample

local function scrape(port)
  local r = admin.get(port, "/metrics")
  assert.are.equal(200, r.status)
  return r.body
end

local function promtool(srv, text)
  local path = srv.dir .. "/metrics.txt"
  server.write_file(path, text)
  local out = server.sh(("promtool check metrics < %s 2>&1; echo rc=$?"):format(path))
  -- promtool's lint prints problems even when it exits 0.
  assert.are.equal("rc=0", (out:gsub("%s+$", "")), out)
end

local function start(extra)
  local args = { "--no-watch", "--admin-listen", "127.0.0.1:0" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return server.start { apps = { ["app.lua"] = APP }, args = args }
end

describe("the admin /metrics", function()
  local srv
  after_each(function()
    if srv then srv:stop() end
    srv = nil
  end)

  it("counts quota refusals per route and reason, and the quota table", function()
    srv = start()
    local port = admin_port(srv)
    local series = 'sluice_quota_refused_total{method="GET",route="/tenant",reason="streams"}'
    local first = pinned.open(srv.port, nil, "/tenant", { ["X-Tenant-ID"] = "acme" })
    assert.are.equal(200, first.status)
    local text = scrape(port)
    assert.are.equal(1, sample(text, "sluice_quota_streams"), text)
    assert.are.equal(1, sample(text, "sluice_quota_keys"))
    for i = 1, 2 do
      local over = pinned.open(srv.port, nil, "/tenant", { ["X-Tenant-ID"] = "acme" })
      assert.are.equal(429, over.status)
      pinned.close(over)
      assert.are.equal(i, sample(scrape(port), series))
    end
    text = scrape(port)
    assert.are.equal(0, sample(text, 'sluice_quota_refused_total{method="GET",route="/tenant",reason="rate"}'))
    assert.is_nil(text:find("acme", 1, true), "a tenant in a label")
    assert.is_not_nil(sample(text, "sluice_quota_evictions_total"))
    pinned.close(first)
    assert.truthy(raw.eventually(function() return sample(scrape(port), "sluice_quota_streams") == 0 end, 5))
  end)

  it("says 1 in sluice_shedding while over --max-streams, and 0 after", function()
    srv = start({ "--max-streams", "2" })
    local port = admin_port(srv)
    local text = scrape(port)
    assert.are.equal(0, sample(text, "sluice_shedding"), text)
    local s1 = pinned.open(srv.port, nil, "/feed")
    local s2 = pinned.open(srv.port, nil, "/feed")
    assert.are.equal(200, s2.status)
    text = scrape(port)
    assert.are.equal(1, sample(text, "sluice_shedding"), text)
    assert.are.equal(1, sample(text, 'sluice_shedding_reason{reason="streams"}'))
    assert.are.equal(0, sample(text, 'sluice_shedding_reason{reason="queued_bytes"}'))
    assert.are.equal(0, sample(text, 'sluice_shed_refused_total{reason="streams"}'))
    local over = pinned.open(srv.port, nil, "/feed")
    assert.are.equal(503, over.status)
    pinned.close(over)
    assert.are.equal(1, sample(scrape(port), 'sluice_shed_refused_total{reason="streams"}'))
    pinned.close(s1)
    assert.truthy(raw.eventually(function() return sample(scrape(port), "sluice_shedding") == 0 end, 5))
    assert.are.equal(0, sample(scrape(port), 'sluice_shedding_reason{reason="streams"}'))
    pinned.close(s2)
  end)

  it("counts admin disconnects and tagged streams", function()
    srv = start()
    local port = admin_port(srv)
    local a = pinned.open(srv.port, nil, "/tagged?user=ann")
    local b = pinned.open(srv.port, nil, "/tagged?user=bob")
    assert.are.equal(200, b.status)
    assert.truthy(raw.eventually(function() return sample(scrape(port), "sluice_tagged_streams") == 2 end, 5))
    assert.are.equal(0, sample(scrape(port), "sluice_admin_disconnects_total"))
    assert.are.equal("1", client.request(srv.port, "POST", "/revoke?user=ann").body)
    assert.truthy(pinned.wait_closed(a))
    local text = scrape(port)
    assert.are.equal(1, sample(text, "sluice_admin_disconnects_total"), text)
    assert.are.equal(1, sample(text, "sluice_tagged_streams"))
    assert.are.equal(0, sample(text, "sluice_access_log_lines_lost_total"))
    pinned.close(b)
  end)
end)

describe("/healthz", function()
  local srv
  after_each(function()
    if srv then srv:stop(1) end   -- a stuck worker never drains: killed
    srv = nil
  end)

  it("stays 200 while the workers idle, and says 503 once a worker's loop is stuck", function()
    srv = start({ "--workers", "2", "--lua-cpu-budget", "0" })
    local port = admin_port(srv)
    local function health()
      return http.request("127.0.0.1", port, { method = "GET", path = "/healthz", timeout = 5 })
    end
    -- Longer than the stall bound (5 s) with nothing to do: idle is not stuck.
    local socket = require "socket"
    local deadline = socket.gettime() + 6.5
    repeat
      assert.are.equal(200, health().status)
      socket.sleep(0.5)
    until socket.gettime() > deadline
    -- A script that never returns, with no CPU budget to stop it.
    local c = pinned.connect(srv.port, 1)
    assert(c:send(client.build("GET", "/spin")))
    local r = raw.eventually(function()
      local x = health()
      return x.status == 503 and x
    end, 15, 0.25)
    assert.truthy(r, "healthz never said 503 with a stuck worker")
    assert.truthy(r.body:find("worker 1 stalled", 1, true), r.body)
    c:close()
  end)
end)

describe("sluice.metrics() served by an app", function()
  local srv
  after_each(function()
    if srv then srv:stop() end
    srv = nil
  end)

  it("says what the admin /metrics says plus the Lua-only families, and passes promtool", function()
    assert.truthy(os.execute("command -v promtool >/dev/null 2>&1") == 0,
                  "promtool is missing: make deps installs Debian's prometheus package")
    srv = start({ "--workers", "2", "--max-streams", "100" })
    local port = admin_port(srv)
    local q = pinned.open(srv.port, nil, "/tenant", { ["X-Tenant-ID"] = "t1" })
    local over = pinned.open(srv.port, nil, "/tenant", { ["X-Tenant-ID"] = "t1" })
    assert.are.equal(429, over.status)
    pinned.close(over)
    client.request(srv.port, "GET", "/boom")
    local text = client.request(srv.port, "GET", "/metrics").body
    promtool(srv, text)
    promtool(srv, scrape(port))
    -- Each family once.
    local seen = {}
    for name in text:gmatch("# TYPE (sluice_[%w_]+)") do
      assert.is_nil(seen[name], "twice: " .. name)
      seen[name] = true
    end
    -- The C side's families, the new ones included ...
    for _, name in ipairs { "sluice_publish_to_written_seconds", "sluice_stream_closes_total",
                            "sluice_quota_refused_total", "sluice_shedding", "sluice_shed_refused_total",
                            "sluice_admin_disconnects_total", "sluice_tagged_streams",
                            "sluice_access_log_lines_lost_total", "sluice_queued_bytes" } do
      assert.truthy(seen[name], "missing: " .. name)
    end
    assert.are.equal(1, sample(text, 'sluice_quota_refused_total{method="GET",route="/tenant",reason="streams"}'))
    -- ... and the Lua side's own.
    for _, name in ipairs { "sluice_lua_memory_bytes", "sluice_route_errors_total", "sluice_timers",
                            "sluice_view_events_total" } do
      assert.truthy(seen[name], "missing: " .. name)
    end
    -- Every family of the admin /metrics is there too.
    for name in scrape(port):gmatch("# TYPE (sluice_[%w_]+)") do
      assert.truthy(seen[name], "the app's /metrics lacks " .. name)
    end
    pinned.close(q)
  end)
end)

describe("the Grafana dashboard", function()
  it("asks only valid PromQL (promtool check rules) of exported series", function()
    assert.truthy(os.execute("command -v promtool >/dev/null 2>&1") == 0, "promtool is missing")
    local ROOT = os.getenv("SLUICE_ROOT") or "."
    local dash = require("sluice.json").decode(server.read_file(ROOT .. "/examples/deploy/grafana-sluice.json"))
    local rules = { "groups:", "  - name: dashboard", "    rules:" }
    local n = 0
    for _, panel in ipairs(dash.panels) do
      for _, t in ipairs(panel.targets or {}) do
        n = n + 1
        local expr = t.expr:gsub("%$instance", ".*")
        rules[#rules + 1] = ("      - record: dashboard:expr%d"):format(n)
        rules[#rules + 1] = ("        expr: '%s'"):format(expr:gsub("'", "''"))
      end
    end
    assert.is_true(n > 20)
    local dir = server.sh("mktemp -d"):gsub("%s+$", "")
    local path = dir .. "/rules.yml"
    server.write_file(path, table.concat(rules, "\n") .. "\n")
    local out = server.sh(("promtool check rules %s 2>&1; echo rc=$?"):format(path))
    server.sh("rm -rf " .. dir)
    assert.truthy(out:find("rc=0", 1, true), out)
    -- The new panels: shedding, quotas, admin disconnects.
    local all = server.read_file(ROOT .. "/examples/deploy/grafana-sluice.json")
    for _, name in ipairs { "sluice_shedding", "sluice_shed_refused_total", "sluice_quota_refused_total",
                            "sluice_admin_disconnects_total", "sluice_access_log_lines_lost_total" } do
      assert.truthy(all:find(name, 1, true), "no panel asks for " .. name)
    end
  end)
end)
