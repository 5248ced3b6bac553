package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
local json = require "sluice.json"

describe("sluice.json", function()
  it("keeps integers up to 2^53 exact (cjson rounds them to 14 digits)", function()
    for _, n in ipairs { 0, -1, 1e14 + 1, 1795250752808445, 2 ^ 53 - 1, -(2 ^ 53 - 1) } do
      local text = json.encode { n = n }
      assert.equal(n, json.decode(text).n, text)
    end
    assert.equal('{"id":1795250752808445}', json.encode { id = 1795250752808445 })
  end)

  it("writes other numbers in the shortest form that reads back the same", function()
    for _, x in ipairs { 0.1, 1 / 3, 1e-300, 123.456, 2 ^ 60 } do
      assert.equal(x, json.decode(json.encode { x })[1])
    end
  end)

  it("escapes control characters, quotes and backslashes", function()
    local s = 'a"b\\c\nd\0e\31'
    assert.equal(s, json.decode(json.encode(s)))
    assert.equal('"a\\"b"', json.encode('a"b'))
  end)

  it("tells arrays from objects, with a marker for empty arrays", function()
    assert.equal("[1,2,3]", json.encode { 1, 2, 3 })
    assert.equal("{}", json.encode {})
    assert.equal("[]", json.encode(json.empty_array()))
    assert.same({ ["1"] = "a", ["3"] = "b" }, json.decode(json.encode { [1] = "a", [3] = "b" }))
  end)

  it("refuses what JSON cannot hold, with a message", function()
    assert.has_error(function() json.encode { f = print } end,
                     "sluice.json: cannot encode a function value as JSON")
    assert.has_error(function() json.encode(0 / 0) end, "sluice.json: cannot encode NaN or infinity as JSON")
    local cycle = {}
    cycle.self = cycle
    assert.has_error(function() json.encode(cycle) end)
  end)

  it("decodes bad input to nil and a message, never an error", function()
    local v, err = json.decode("{nope")
    assert.is_nil(v)
    assert.is_string(err)
    assert.is_nil((json.decode(42)))
  end)
end)
