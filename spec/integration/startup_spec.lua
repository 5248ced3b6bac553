-- Starting with an apps directory that is not there is a mistake to report,
-- not a server that answers 404 to everything. A broken script is only a
-- warning (errors_spec): the other scripts are still served.
local server = require "server"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")

-- Runs sluice with args (bounded by timeout(1)); returns output, exit status.
local function run(args)
  local out = server.sh(("timeout -s KILL 10 %s --listen 127.0.0.1:0 --lua-path %s/lua %s 2>&1; echo \"exit=$?\"")
    :format(BIN, ROOT, args))
  return out, tonumber(out:match("exit=(%d+)%s*$"))
end

describe("starting with an unusable apps directory", function()
  local dir
  before_each(function() dir = server.tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  it("refuses a directory that does not exist, and says which", function()
    local out, code = run("--apps " .. dir .. "/nonexistent")
    assert.is_truthy(code, out)
    assert.are_not.equal(0, code, "started anyway:\n" .. out)
    assert.are_not.equal(137, code, "was still serving after 10 s:\n" .. out)
    assert.matches("apps directory " .. dir:gsub("%p", "%%%0") .. "/nonexistent: No such file or directory", out)
    assert.is_nil(out:find("listening on", 1, true), "it listened:\n" .. out)
  end)

  it("refuses a path that is a file", function()
    server.write_file(dir .. "/file.lua", "return 1")
    local out, code = run("--apps " .. dir .. "/file.lua")
    assert.are_not.equal(0, code, out)
    assert.are_not.equal(137, code, "was still serving after 10 s:\n" .. out)
    assert.matches("Not a directory", out)
  end)

  it("refuses it in --check too", function()
    local out = server.sh(("%s --check %s/nonexistent --lua-path %s/lua 2>&1; echo \"exit=$?\"")
      :format(BIN, dir, ROOT))
    assert.matches("No such file or directory", out)
    assert.is_nil(out:match("exit=0"), out)
  end)

  it("still starts with an empty directory (nothing to serve yet is a valid state)", function()
    os.execute("mkdir -p " .. dir .. "/empty")
    local srv = server.start { dir = dir, apps_dir = dir .. "/empty" }
    assert.is_truthy(srv.port)
    srv:stop()
    dir = server.tmpdir()   -- stop() removed it
  end)
end)

-- The process and the worker are apart: the main thread runs the process
-- (signals, reload watcher, listening socket), the worker serves on a
-- thread of its own with its own loop, and the signal thread waits for
-- signals. Seen the way an operator sees it: the threads' names.
describe("the threads of a running server", function()
  it("are the process (main), the signal thread and one worker", function()
    local srv = server.start { apps = { ["a.lua"] = [[
local app = require("sluice").app()
app:get("/hello", function() return "hello" end)
return app
]] } }
    local names = {}
    for tid in server.sh(("ls /proc/%d/task"):format(srv.pid)):gmatch("%d+") do
      local comm = server.read_file(("/proc/%d/task/%s/comm"):format(srv.pid, tid))
      if comm then names[#names + 1] = comm:gsub("%s+$", "") end
    end
    table.sort(names)
    local list = table.concat(names, ", ")
    srv:stop()
    local count = {}
    for _, n in ipairs(names) do count[n] = (count[n] or 0) + 1 end
    assert.equal(1, count["worker 0"], "no worker thread: " .. list)
    assert.equal(1, count["signals"], "no signal thread: " .. list)
    assert.is_nil(count["worker 1"], "more than one worker: " .. list)
  end)
end)
