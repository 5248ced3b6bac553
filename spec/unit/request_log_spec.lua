package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

-- req:log(key, value): the fields an app adds to a request's access-log
-- line, and the trace fields derived from sluice's traceparent.
local request = require "sluice.request"

local function req() return request.new("GET", "/x") end

describe("req:log", function()
  it("keeps strings, numbers and booleans by key", function()
    local r = req()
    assert.is_true(r:log("user", "u1"))
    assert.is_true(r:log("n", 3))
    assert.is_true(r:log("ok", false))
    assert.same({ user = "u1", n = 3, ok = false }, r._log)
  end)

  it("bounds keys, values and their number", function()
    local r = req()
    for i = 1, request.MAX_LOG_FIELDS do assert.is_true(r:log("k" .. i, i)) end
    assert.is_false(r:log("one_too_many", 1))
    assert.is_true(r:log("k1", "replaced"), "an existing key can change")
    assert.is_true(r:log("k2", nil))
    assert.is_true(r:log("now_fits", 1), "a removed key frees its place")
    r = req()
    r:log("long", string.rep("v", 1000))
    assert.equal(256, #r._log.long)
  end)

  it("refuses bad keys and values with a message", function()
    local r = req()
    assert.has_error(function() r:log("", 1) end)
    assert.has_error(function() r:log(string.rep("k", 33), 1) end)
    assert.has_error(function() r:log("has space", 1) end)
    assert.has_error(function() r:log(1, 1) end)
    assert.has_error(function() r:log("t", {}) end)
    assert.has_error(function() r:log("f", print) end)
  end)

  it("derives trace_id and span_id from the traceparent", function()
    local r = req()
    r.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert.equal("0af7651916cd43dd8448eb211c80319c", r.trace_id)
    assert.equal("b7ad6b7169203331", r.span_id)
    assert.is_nil(req().trace_id)
  end)
end)
