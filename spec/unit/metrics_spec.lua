package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
local metrics = require "sluice.metrics"

describe("sluice.metrics", function()
  local stats = {
    connections = 3, accepted = 10, published = 7, delivered = 21, lua_memory = 1024,
    runtime = {
      reloads = 2, load_errors = 1,
      routes = {
        { method = "GET", pattern = "/feed", kind = "stream", requests = 5, errors = 1, streams = 4,
          rejected = { [401] = 2 }, auth_failures = { expired = 2 },
          served_variants = { stable = 3, green = 2 } },
        { method = "POST", pattern = '/odd"name\\', kind = "plain", requests = 1, errors = 0,
          rejected = {}, auth_failures = {}, served_variants = {} },
      },
      views = { { key = "apps/a.lua#support", events = 7, mask_ops = 14, errors = 0 } },
    },
  }
  local text = metrics.render(stats)

  local function value(line_prefix)
    for line in text:gmatch("[^\n]+") do
      if line:sub(1, #line_prefix) == line_prefix then
        return tonumber(line:sub(#line_prefix + 1):match("^ (%S+)$"))
      end
    end
  end

  it("gives every metric a HELP and a TYPE line", function()
    for name in text:gmatch("\nsluice_([%w_]+)[ {]") do
      assert.matches("# TYPE sluice_" .. name .. " ", text, 1, true)
    end
    assert.equal(3, value("sluice_connections"))
    assert.equal(21, value("sluice_delivered_total"))
  end)

  it("labels per-route and per-variant counters so a rollout can be compared", function()
    assert.equal(3, value('sluice_route_variant_total{method="GET",route="/feed",variant="stable"}'))
    assert.equal(2, value('sluice_route_variant_total{method="GET",route="/feed",variant="green"}'))
    assert.equal(2, value('sluice_route_rejected_total{method="GET",route="/feed",status="401"}'))
    assert.equal(2, value('sluice_route_auth_failures_total{method="GET",reason="expired",route="/feed"}'))
    assert.equal(14, value('sluice_view_mask_operations_total{view="apps/a.lua#support"}'))
  end)

  it("escapes label values", function()
    assert.equal(1, value('sluice_route_requests_total{method="POST",route="/odd\\"name\\\\"}'))
  end)

  it("ends with a newline, as scrapers require", function()
    assert.equal("\n", text:sub(-1))
  end)
end)
