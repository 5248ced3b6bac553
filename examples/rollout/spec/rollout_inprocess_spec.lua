-- The rollout example in-process: the split, the override header and the
-- timer's tick through each variant's view, with a clock the spec moves.
--
--   sluice test examples/rollout
local testing = require "sluice.testing"
local cjson = require "cjson"

local ROLLOUT = {
  header = "X-Traffic-Color",
  variants = { "stable", "green" },
  split = { green = 10 },
  key = function(req) return req.query.user end,
  salt = "feed-2026",
}

describe("examples/rollout, in-process", function()
  local app
  before_each(function() app = testing.app { apps = "." } end)
  after_each(function() app:close() end)

  it("gives every user the variant the rollout code computes", function()
    for i = 1, 200 do
      local user = "user-" .. i
      local s = app:stream("/feed", { query = { user = user } })
      assert.equal(testing.variant(ROLLOUT, user), s.headers["x-variant"], user)
      s:close()
    end
  end)

  it("puts a tester on green by the override header, with its own view", function()
    local s = app:stream("/feed", { headers = { ["X-Traffic-Color"] = "green" } })
    assert.equal("green", s.headers["x-variant"])
    assert.equal("summary", s.views.feed)
    assert.same({ "hello", "you are on the green variant" }, { s:next().event, s.received[1].data })
  end)

  it("ticks every second, through each variant's view, when the clock moves", function()
    local green = app:stream("/feed", { headers = { ["X-Traffic-Color"] = "green" } })
    green:next()   -- hello
    local stable = app:stream("/feed", { headers = { ["X-Traffic-Color"] = "stable" } })
    assert.is_nil(stable:next())
    assert.equal(0, app:advance(0.5))
    assert.is_nil(stable:next())
    assert.equal(3, app:advance(2.6))   -- at 1, 2 and 3 s
    local ticks = stable:events()
    assert.equal(3, #ticks)
    local start = math.floor(app:now() - 3.1)
    for i, ev in ipairs(ticks) do
      assert.equal("tick", ev.event)
      assert.is_true(cjson.decode(ev.data).at >= start + i - 1)
      if i > 1 then assert.is_true(tonumber(ev.id) > tonumber(ticks[i - 1].id)) end
    end
    local g = assert(green:next())
    assert.is_nil(cjson.decode(g.data).at)          -- the summary view renames it
    assert.is_number(cjson.decode(g.data).time)
  end)

  it("counts the streams each variant served", function()
    app:stream("/feed", { headers = { ["X-Traffic-Color"] = "green" } }):close()
    app:stream("/feed", { headers = { ["X-Traffic-Color"] = "stable" } }):close()
    app:stream("/feed", { headers = { ["X-Traffic-Color"] = "stable" } }):close()
    assert.same({ green = 1, stable = 2 }, app:get("/feed/stats").json)
  end)
end)
