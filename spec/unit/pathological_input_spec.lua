-- Every library parser that reads client input, fed pathological 64 KiB
-- inputs (long blank runs, many separators, deep nesting, invalid UTF-8,
-- NULs): none raises, and each call stays far below what a backtracking
-- pattern costs (the cookie parser took ~1 s per 16 KiB of blanks, ~20 s
-- per 64 KiB). The bound is generous CPU time, not a benchmark:
-- bench/pathological.lua measures the real figures.
local text = require "sluice.text"
local request = require "sluice.request"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local cases = dofile(ROOT .. "/spec/unit/pathological_cases.lua")

local BOUND_MS = 50   -- per call, CPU time (os.clock: noise from other processes does not count)

-- Runs run(x) and returns ok, err, its CPU time in ms. A time above the
-- bound but within ten times it is measured twice more and the best kept
-- (a GC cycle or a cold cache may slow one run); a quadratic parser is
-- slower than that every time (and is run once only).
local function timed(run, x)
  local t0 = os.clock()
  local ok, err = pcall(run, x)
  local best = (os.clock() - t0) * 1000
  local tries = 1
  while ok and best >= BOUND_MS and best < 10 * BOUND_MS and tries < 3 do
    t0 = os.clock()
    run(x)
    best = math.min(best, (os.clock() - t0) * 1000)
    tries = tries + 1
  end
  return ok, err, best
end

describe("pathological client input", function()
  it("the inputs are 64 KiB each", function()
    for _, input in ipairs(cases.inputs) do
      assert.is_true(#input[2] >= cases.KIB64 - 8 and #input[2] <= cases.KIB64 + 128, input[1])
    end
  end)

  for _, p in ipairs(cases.parsers) do
    local name, run, prepare = p[1], p[2], p[3]
    it(name .. " answers every input within " .. BOUND_MS .. " ms, without raising", function()
      local slow, raised = {}, {}
      for _, input in ipairs(cases.inputs) do
        local x = prepare and prepare(input[2]) or input[2]
        local ok, err, ms = timed(run, x)
        if not ok then
          raised[#raised + 1] = input[1] .. ": " .. tostring(err)
        elseif ms >= BOUND_MS then
          slow[#slow + 1] = ("%s: %.0f ms"):format(input[1], ms)
        end
      end
      assert.same({}, raised)
      assert.same({}, slow)
    end)
  end
end)

-- The linear parsers give what the patterns they replaced gave, on short
-- inputs made of the characters that matter (where the old patterns are
-- still fast). Deterministic: a fixed seed.
describe("linear parsers agree with the patterns they replaced", function()
  local ALPHABET = { " ", "\t", "\r", "\n", "\v", "\f", "=", ";", ",", "&", '"', "a", "b", "+", "%", "2", "0", "\0", "\255" }

  local function random_string(max)
    local t = {}
    for i = 1, math.random(0, max) do t[i] = ALPHABET[math.random(#ALPHABET)] end
    return table.concat(t)
  end

  local function old_trim(s) return (s:match("^%s*(.-)%s*$")) end

  local function old_cookies(header)
    local c = {}
    for pair in header:gmatch("[^;]+") do
      local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
      if k and k ~= "" and c[k] == nil then
        if v:sub(1, 1) == '"' and v:sub(-1) == '"' and #v >= 2 then v = v:sub(2, -2) end
        c[k] = v
      end
    end
    return c
  end

  local function old_query(qs)
    local q = {}
    local function dec(s)
      return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
    end
    for pair in qs:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=?(.*)$")
      k = dec(k)
      if k ~= "" and q[k] == nil then q[k] = dec(v) end
    end
    return q
  end

  before_each(function() math.randomseed(9) end)

  it("text.trim", function()
    for _ = 1, 5000 do
      local s = random_string(12)
      assert.equal(old_trim(s), text.trim(s), ("%q"):format(s))
    end
  end)

  it("request.parse_cookies", function()
    for _ = 1, 5000 do
      local s = random_string(16)
      assert.same(old_cookies(s), request.parse_cookies(s), ("%q"):format(s))
    end
  end)

  it("request.parse_query", function()
    for _ = 1, 5000 do
      local s = random_string(16)
      assert.same(old_query(s), request.parse_query(s), ("%q"):format(s))
    end
  end)
end)
