package.path = "./lua/?.lua;./lua/?/init.lua;./spec/helpers/?.lua;" .. package.path
local expect_refused = require "refusals"

local rollout = require "sluice.rollout"

local function req(t)
  t = t or {}
  return { method = "GET", path = "/s", params = {}, query = {}, cookies = {},
           headers = t.headers or {}, remote_addr = t.remote_addr or "10.0.0.1" }
end

-- Golden vectors: bucket = be32(sha256(salt .. "\0" .. key)[1..4]) % 10000,
-- computed independently (Python hashlib) when the format was fixed.  If one
-- of these changes, every user changes variant: that is a breaking change.
local GOLDEN = {
  { "user-1", "orders", 4650 },
  { "user-2", "orders", 6264 },
  { "42", "orders", 2068 },
  { "alice", "", 6458 },
  { "bob", "checkout-v2", 8429 },
  { "127.0.0.1", "orders", 7685 },
  { "", "", 4604 },
  { "\231\148\168\230\136\183", "orders", 9133 }, -- UTF-8 bytes
}

local function count(r, n, keyfmt)
  local c = {}
  for i = 1, n do
    local v = r:choose(req { remote_addr = string.format(keyfmt, i) })
    c[v] = (c[v] or 0) + 1
  end
  return c
end

describe("sluice.rollout", function()
  describe("bucket()", function()
    for _, g in ipairs(GOLDEN) do
      it(string.format("golden %q/%q = %d", g[1], g[2], g[3]), function()
        assert.are.equal(g[3], rollout.bucket(g[1], g[2]))
      end)
    end

    it("defaults salt to the empty string and accepts numbers", function()
      assert.are.equal(6458, rollout.bucket("alice"))
      assert.are.equal(2068, rollout.bucket(42, "orders"))
    end)

    it("agrees with the openssl command line", function()
      for i = 1, 3 do
        local g = GOLDEN[i]
        local p = assert(io.popen(string.format("printf '%%s\\0%%s' '%s' '%s' | openssl dgst -sha256 -r", g[2], g[1])))
        local hex = p:read("*l")
        p:close()
        assert.are.equal(g[3], tonumber(hex:sub(1, 8), 16) % 10000)
      end
    end)

    it("is the same in another luajit process", function()
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
        package.path = "./lua/?.lua;" .. package.path
        local r = require "sluice.rollout"
        for i = 1, 50 do io.write(r.bucket("k" .. i, "cross-process"), "\n") end
      ]])
      f:close()
      local p = assert(io.popen("luajit " .. script))
      local i = 0
      for line in p:lines() do
        i = i + 1
        assert.are.equal(rollout.bucket("k" .. i, "cross-process"), tonumber(line))
        if i >= 50 then break end
      end
      p:close()
      os.remove(script)
      assert.are.equal(50, i)
    end)

    it("stays in 0..9999 and spreads evenly", function()
      local hist = {}
      for i = 1, 100000 do
        local b = rollout.bucket("u" .. i, "spread")
        assert.is_true(b >= 0 and b <= 9999 and b % 1 == 0)
        local d = math.floor(b / 1000) + 1
        hist[d] = (hist[d] or 0) + 1
      end
      for d = 1, 10 do assert.is_true(math.abs(hist[d] - 10000) < 500, "decile " .. d .. ": " .. hist[d]) end
    end)

    it("depends on the salt", function()
      local same = 0
      for i = 1, 1000 do
        if rollout.bucket("u" .. i, "a") == rollout.bucket("u" .. i, "b") then same = same + 1 end
      end
      assert.is_true(same < 10)
    end)
  end)

  describe("split shares over 100,000 keys", function()
    local cases = {
      { { green = 10 } },
      { { green = 10, blue = 5 } },
      { { green = 0.5 } },
      { { green = 33.3, blue = 33.3, red = 33.4 } },
      { { green = 50, blue = 50 } },
      { { green = 100 } },
      { { green = 0 } },
    }
    for _, c in ipairs(cases) do
      local split = c[1]
      local label = {}
      for k, v in pairs(split) do label[#label + 1] = k .. "=" .. v end
      table.sort(label)
      it(table.concat(label, " "), function()
        local r = rollout.new { split = split, salt = "share-test" }
        local got = count(r, 100000, "user-%d")
        local rest = 100
        for name, pct in pairs(split) do
          local share = (got[name] or 0) / 1000
          assert.is_true(math.abs(share - pct) < 1, name .. ": " .. share .. "% for " .. pct .. "%")
          rest = rest - pct
        end
        local share = (got.stable or 0) / 1000
        assert.is_true(math.abs(share - rest) < 1, "stable: " .. share .. "%")
      end)
    end
  end)

  describe("choose()", function()
    local spec = {
      variants = { "stable", "green", "blue" }, default = "stable",
      header = { "X-Traffic-Color", "X-Variant" },
      key = function(r) return r.headers["x-user"] end,
      split = { green = 10 }, salt = "orders",
    }
    local r = rollout.new(spec)
    -- find keys with known placement, from the golden formula
    local in_green, in_default
    for i = 1, 1000 do
      local b = rollout.bucket("user-" .. i, "orders")
      if b < 1000 and not in_green then in_green = "user-" .. i end
      if b >= 1000 and not in_default then in_default = "user-" .. i end
    end

    local cases = {
      { "header override", { ["x-traffic-color"] = "blue", ["x-user"] = in_green }, "blue", "header" },
      { "header case and blanks", { ["x-traffic-color"] = "  GREEN ", ["x-user"] = in_default }, "green", "header" },
      { "header can force the default", { ["x-traffic-color"] = "stable", ["x-user"] = in_green }, "stable", "header" },
      { "second header checked", { ["x-variant"] = "blue", ["x-user"] = in_default }, "blue", "header" },
      { "first header wins", { ["x-traffic-color"] = "green", ["x-variant"] = "blue" }, "green", "header" },
      { "unknown colour falls back to split", { ["x-traffic-color"] = "purple", ["x-user"] = in_green }, "green", "split" },
      { "unknown colour falls back to default", { ["x-traffic-color"] = "purple", ["x-user"] = in_default }, "stable", "default" },
      { "unknown first header, known second", { ["x-traffic-color"] = "purple", ["x-variant"] = "blue" }, "blue", "header" },
      { "multi-valued header ignored", { ["x-traffic-color"] = { "blue", "green" }, ["x-user"] = in_default }, "stable", "default" },
      { "split by key", { ["x-user"] = in_green }, "green", "split" },
      { "default by key", { ["x-user"] = in_default }, "stable", "default" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local v, why = r:choose(req { headers = c[2] })
        assert.are.equal(c[3], v)
        assert.are.equal(c[4], why)
      end)
    end

    it("returns the bucket for split decisions", function()
      local _, _, b = r:choose(req { headers = { ["x-user"] = in_green } })
      assert.are.equal(rollout.bucket(in_green, "orders"), b)
    end)

    it("falls back to remote_addr when the key is missing or empty", function()
      local addr_green, addr_default
      for i = 1, 1000 do
        local a = "10.1.0." .. i
        local b = rollout.bucket(a, "orders")
        if b < 1000 then addr_green = addr_green or a else addr_default = addr_default or a end
      end
      assert.are.equal("green", (r:choose(req { remote_addr = addr_green })))
      assert.are.equal("stable", (r:choose(req { remote_addr = addr_default })))
      assert.are.equal("green", (r:choose(req { remote_addr = addr_green, headers = { ["x-user"] = "" } })))
      local static = rollout.new { split = { green = 10 }, salt = "orders", key = "" }
      assert.are.equal("green", (static:choose(req { remote_addr = addr_green })))
    end)

    it("no key and no address gives the default", function()
      local v, why = r:choose({ headers = {} })
      assert.are.equal("stable", v)
      assert.are.equal("default", why)
    end)

    it("string and number keys", function()
      for _, key in ipairs { "user-7", 12345 } do
        local rr = rollout.new { split = { green = 50 }, key = key, salt = "s" }
        local expect = rollout.bucket(tostring(key), "s") < 5000 and "green" or "stable"
        for _ = 1, 3 do assert.are.equal(expect, (rr:choose(req()))) end
      end
    end)

    it("is sticky: the same key always gets the same variant", function()
      for i = 1, 200 do
        local h = { ["x-user"] = "sticky-" .. i }
        local first = r:choose(req { headers = h })
        for _ = 1, 3 do assert.are.equal(first, (r:choose(req { headers = h }))) end
      end
    end)

    it("rollout.choose caches the compiled spec", function()
      local v, why = rollout.choose(req { headers = { ["x-user"] = in_green } }, spec)
      assert.are.equal("green", v)
      assert.are.equal("split", why)
      assert.are.equal("stable", (rollout.choose(req { headers = { ["x-user"] = in_default } }, spec)))
    end)

    it("without variants, split names are known to the header", function()
      local rr = rollout.new { header = "x-c", split = { canary = 1 } }
      assert.are.same({ "canary", "header" }, { rr:choose(req { headers = { ["x-c"] = "canary" } }) })
      assert.are.same({ "stable", "header" }, { rr:choose(req { headers = { ["x-c"] = "stable" } }) })
    end)
  end)

  describe("ramping a share only moves keys into that variant", function()
    local N = 20000
    local function assign(spec)
      local r = rollout.new(spec)
      local out = {}
      for i = 1, N do out[i] = r:choose(req { remote_addr = "ramp-" .. i }) end
      return out
    end
    local function check_ramp(before, after, variant)
      local moved = 0
      for i = 1, N do
        if before[i] == variant then
          assert.are.equal(variant, after[i], "key " .. i .. " left " .. variant)
        elseif after[i] ~= before[i] then
          assert.are.equal(variant, after[i], "key " .. i .. " moved " .. before[i] .. " -> " .. after[i])
          moved = moved + 1
        end
      end
      return moved
    end

    it("single variant 10 -> 50 -> 100", function()
      local a10 = assign { split = { green = 10 }, salt = "ramp" }
      local a50 = assign { split = { green = 50 }, salt = "ramp" }
      local a100 = assign { split = { green = 100 }, salt = "ramp" }
      assert.is_true(check_ramp(a10, a50, "green") > 0.35 * N)
      assert.is_true(check_ramp(a50, a100, "green") > 0.45 * N)
      for i = 1, N do assert.are.equal("green", a100[i]) end
    end)

    it("two variants: ramping either one leaves the other untouched", function()
      local variants = { "stable", "green", "blue" }
      local g10b5 = assign { variants = variants, split = { green = 10, blue = 5 }, salt = "ramp" }
      local g50b5 = assign { variants = variants, split = { green = 50, blue = 5 }, salt = "ramp" }
      local g50b40 = assign { variants = variants, split = { green = 50, blue = 40 }, salt = "ramp" }
      assert.is_true(check_ramp(g10b5, g50b5, "green") > 0.35 * N)
      assert.is_true(check_ramp(g50b5, g50b40, "blue") > 0.30 * N)
    end)

    it("three variants: the outer ones ramp cleanly", function()
      local variants = { "stable", "green", "blue", "red" }
      local base = assign { variants = variants, split = { green = 10, blue = 10, red = 10 }, salt = "ramp" }
      local red = assign { variants = variants, split = { green = 10, blue = 10, red = 30 }, salt = "ramp" }
      local blue = assign { variants = variants, split = { green = 10, blue = 30, red = 10 }, salt = "ramp" }
      assert.is_true(check_ramp(base, red, "red") > 0.15 * N)
      assert.is_true(check_ramp(base, blue, "blue") > 0.15 * N)
    end)
  end)

  describe("configuration errors", function()
    local cases = {
      { nil, "spec table required" },
      { { split = { green = 60, blue = 50 } }, "more than 100%" },
      { { split = { green = -1 } }, "between 0 and 100" },
      { { split = { green = "10" } }, "between 0 and 100" },
      { { variants = { "stable", "green" }, split = { blue = 5 } }, "'blue' is not in spec.variants" },
      { { split = { stable = 5 } }, "cannot have a split share" },
      { { key = {} }, "spec.key must be" },
      { { header = 5 }, "spec.header must be" },
      { { salt = 5 }, "spec.salt must be" },
      { { variants = { "Green", "green" } }, "differ only in case" },
    }
    expect_refused(rollout.new, cases)
  end)
end)
