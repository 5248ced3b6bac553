-- bench/pathological.lua: time per call of every library parser that reads
-- client input, on 64 KiB pathological inputs (long blank runs, many
-- separators, deep nesting, invalid UTF-8, NULs). The inputs and parsers
-- are spec/unit/pathological_cases.lua, the ones the spec bounds
-- generously (spec/unit/pathological_input_spec.lua); this measures them.
--
--   luajit bench/pathological.lua            all parsers, every input
--   luajit bench/pathological.lua cookie     parsers whose name contains "cookie"
--   JIT=off luajit bench/pathological.lua    interpreted (as with a CPU budget)
--
-- Prints, per parser, the slowest input and its median time over REPS runs
-- (default 5), then every input above 1 ms. A linear parser stays well
-- below 1 ms per 64 KiB; the backtracking patterns this replaced took 1 s
-- and more per 16 KiB.
local repo = arg[0]:match("^(.*)/bench/[^/]*$") or "."
package.path = repo .. "/lua/?.lua;" .. repo .. "/lua/?/init.lua;" .. package.path
if os.getenv("JIT") == "off" and jit then jit.off() end

local cases = dofile(repo .. "/spec/unit/pathological_cases.lua")
local filter = arg[1]
local REPS = tonumber(os.getenv("REPS") or "5")
local clock = os.clock

local function median_ms(f, s)
  local t = {}
  for i = 1, REPS do
    local t0 = clock()
    f(s)
    t[i] = (clock() - t0) * 1000
  end
  table.sort(t)
  return t[math.floor((REPS + 1) / 2)]
end

print(("%-48s %10s  %s"):format("parser", "worst ms", "on input"))
local slow = {}
for _, p in ipairs(cases.parsers) do
  local name, f = p[1], p[2]
  if not filter or name:find(filter, 1, true) then
    local worst, worst_in = -1, nil
    for _, input in ipairs(cases.inputs) do
      local x = p[3] and p[3](input[2]) or input[2]
      local ms = median_ms(f, x)
      if ms > worst then worst, worst_in = ms, input[1] end
      if ms > 1 then slow[#slow + 1] = ("  %-46s %8.3f ms  %s"):format(name, ms, input[1]) end
    end
    print(("%-48s %10.3f  %s"):format(name, worst, worst_in))
  end
end
if #slow > 0 then
  print("\nabove 1 ms:")
  for _, l in ipairs(slow) do print(l) end
end
