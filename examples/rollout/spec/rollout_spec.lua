-- Specs of the rollout example, written as an app author would, with the
-- sluice test kit. Run them with:
--
--   sluice test examples/rollout
local testing = require "sluice.testing"
local cjson = require "cjson"

-- The rollout options of /feed, as feed.lua declares them. testing.variant
-- runs sluice's own rollout code on them, so the spec can say in advance
-- which variant a user must get.
local ROLLOUT = {
  header = "X-Traffic-Color",
  variants = { "stable", "green" },
  split = { green = 10 },
  key = function(req) return req.query.user end,
  salt = "feed-2026",
}

describe("examples/rollout", function()
  local srv
  lazy_setup(function() srv = testing.server { apps = "." } end)
  lazy_teardown(function() srv:stop() end)

  describe("the override header", function()
    it("puts a tester on green, whatever the split says", function()
      local s = srv:stream("/feed", { headers = { ["X-Traffic-Color"] = "green" } })
      assert.equal(200, s.status)
      assert.equal("green", s.headers["x-variant"])
      local hello = assert(s:next(3), "no hello event")
      assert.same({ "hello", "you are on the green variant" }, { hello.event, hello.data })
      s:close()
    end)

    it("is matched without regard to case and blanks", function()
      assert.equal("green", testing.variant(ROLLOUT, { headers = { ["x-traffic-color"] = " GREEN " } }))
      local s = srv:stream("/feed", { headers = { ["X-Traffic-Color"] = " GREEN " } })
      assert.equal("green", s.headers["x-variant"])
      s:close()
    end)

    it("falls through to the split for an unknown colour", function()
      local user = "user-1"
      local expected = testing.variant(ROLLOUT, user)
      assert.equal(expected, (testing.variant(ROLLOUT, { headers = { ["X-Traffic-Color"] = "purple" },
                                                          query = { user = user } })))
      local s = srv:stream("/feed", { headers = { ["X-Traffic-Color"] = "purple" }, query = { user = user } })
      assert.equal(expected, s.headers["x-variant"])
      s:close()
    end)
  end)

  describe("the split", function()
    it("gives every user the variant the rollout code computes, about 10% green", function()
      local green = 0
      for i = 1, 100 do
        local user = "user-" .. i
        local expected = testing.variant(ROLLOUT, user)
        local s = srv:stream("/feed", { query = { user = user } })
        assert.equal(expected, s.headers["x-variant"], "variant of " .. user)
        s:close()
        if expected == "green" then green = green + 1 end
      end
      -- sticky buckets, not chance: the same users give the same count on
      -- every run; 10% of 100 users, within what hashing spreads
      assert.is_true(green >= 3 and green <= 20, "green users: " .. green)
    end)

    it("is sticky: a user keeps the variant on every connection", function()
      local user = "alice"
      local first = srv:stream("/feed", { query = { user = user } })
      for _ = 1, 5 do
        local again = srv:stream("/feed", { query = { user = user } })
        assert.equal(first.headers["x-variant"], again.headers["x-variant"])
        again:close()
      end
      first:close()
    end)

    it("is counted per variant", function()
      local stats = srv:request { path = "/feed/stats" }
      assert.equal(200, stats.status)
      assert.is_table(stats.json)
      assert.is_true((stats.json.green or 0) >= 1, stats.body)
      assert.is_true((stats.json.stable or 0) >= 1, stats.body)
    end)
  end)

  describe("the timer", function()
    it("ticks every second to stable users, with the time as 'at'", function()
      local s = srv:stream("/feed", { headers = { ["X-Traffic-Color"] = "stable" } })
      assert.equal("stable", s.headers["x-variant"])
      local tick = assert(s:next(3), "no tick within 3 s")
      assert.equal("tick", tick.event)
      assert.is_number(cjson.decode(tick.data).at)
      s:close()
    end)

    it("ticks to green users through the candidate's summary view ('time')", function()
      local s = srv:stream("/feed", { headers = { ["X-Traffic-Color"] = "green" } })
      local evs = s:events_until(function(ev) return ev.event == "tick" end, 3)
      local tick = evs[#evs]
      assert.equal("tick", tick and tick.event, "no tick within 3 s")
      local data = cjson.decode(tick.data)
      assert.is_number(data.time)
      assert.is_nil(data.at)
      s:close()
    end)
  end)
end)
