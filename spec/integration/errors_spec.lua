-- Script errors: a failing handler, stream or timer becomes a 500 or a log
-- line with file:line, a script that fails to load is reported and left
-- out, and the server keeps serving everything else.
local server = require "server"
local client = require "client"
local raw = require "raw"
local socket = require "socket"

-- Line numbers matter here: the specs look for them in the log.
local GOOD = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/good", function(req) return "good" end)
app:get("/subscribers/:ch", function(req) return tostring(sluice.subscribers(req.params.ch)) end)
return app
]]

local FAILING = [[
local sluice = require "sluice"
local app = sluice.app()

app:get("/plain-error", function(req)
  error("plain handler failed")
end)

app:get("/nil-index", function(req)
  local t = nil
  return t.field
end)

app:get("/table-error", function(req)
  error({ code = 1 })
end)

app:stream("/stream-error", function(req, s)
  s:subscribe("x")
  error("stream handler failed")
end)

app:stream("/timer-error", function(req, s)
  s:every(0.05, function()
    error("stream timer failed")
  end)
end)

app:get("/bad-status", function(req)
  return 42
end)

app:get("/spin", function(req)
  while true do end
end)

return app
]]

local SYNTAX = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/syntax", function(req) return "never" end
return app
]]

local TOPLEVEL = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/toplevel", function(req) return "never" end)
local config = nil
local port = config.port
return app
]]

local NO_RETURN = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/no-return", function(req) return "never" end)
]]

local WRONG_RETURN = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/wrong-return", function(req) return "never" end)
return { app = app }
]]

describe("script errors", function()
  local srv

  setup(function()
    srv = server.start {
      apps = {
        ["good.lua"] = GOOD, ["failing.lua"] = FAILING, ["syntax.lua"] = SYNTAX,
        ["toplevel.lua"] = TOPLEVEL, ["noreturn.lua"] = NO_RETURN,
        ["wrongreturn.lua"] = WRONG_RETURN,
      },
      args = { "--no-watch", "--lua-cpu-budget", "100" },
    }
  end)
  teardown(function() srv:stop() end)

  local function assert_serves()
    local r = client.request(srv.port, "GET", "/good")
    assert.equal(200, r.status)
    assert.equal("good", r.body)
    assert.is_true(srv:running())
  end

  -- The log gains a line matching pattern (plain text), bounded wait.
  local function assert_logged(text, what)
    local ok = srv:wait_log(text:gsub("%p", "%%%0"), 3)
    assert.is_true(ok, ("%s: the log has no %q; log:\n%s"):format(what, text, srv:log()))
  end

  -- The line of the log that mentions text.
  local function log_line(text)
    for line in srv:log():gmatch("[^\n]+") do
      if line:find(text, 1, true) then return line end
    end
  end

  describe("in handlers", function()
    it("answers 500 for an error in a plain handler and logs file:line", function()
      local r = client.request(srv.port, "GET", "/plain-error")
      assert.equal(500, r.status)
      assert.matches("^500 Internal Server Error", r.body)
      assert.is_nil(r.body:find("plain handler failed", 1, true), "the error leaks to the client")
      assert_logged("failing.lua:5: plain handler failed", "plain handler")
      assert.matches("%[error%]", log_line("failing.lua:5: plain handler failed"))
      assert_serves()
    end)

    it("answers 500 for a runtime fault (indexing nil) with file:line", function()
      local r = client.request(srv.port, "GET", "/nil-index")
      assert.equal(500, r.status)
      assert_logged("failing.lua:10:", "nil index")
      assert_serves()
    end)

    it("answers 500 for a non-string error object, logging where it was raised", function()
      local r = client.request(srv.port, "GET", "/table-error")
      assert.equal(500, r.status)
      assert_serves()
      -- the error-level line must still lead to the script: file:line
      local line = log_line("GET /table-error")
      assert.is_truthy(line, "no log line for GET /table-error:\n" .. srv:log())
      assert.matches("failing%.lua:%d+", line)
    end)

    it("answers 500 when a handler returns something that is not a status", function()
      local r = client.request(srv.port, "GET", "/bad-status")
      assert.equal(500, r.status)
      assert_logged("invalid status 42", "bad status")
      assert_serves()
    end)

    it("stops a handler that never returns, answers 500 and keeps serving", function()
      local r = client.request(srv.port, "GET", "/spin")
      assert.equal(500, r.status)
      assert_logged("exceeded its CPU budget", "CPU budget")
      assert_serves()
    end)

    it("keeps the connection usable after a 500", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/plain-error") .. raw.request("GET", "/good")))
      local r1 = assert(c:read_response())
      assert.equal(500, r1.status)
      local r2 = assert(c:read_response())
      assert.equal(200, r2.status)
      assert.equal("good", r2.body)
      c:close()
    end)

    it("answers 500 for an error in a stream handler, with no stream left behind", function()
      local r = client.request(srv.port, "GET", "/stream-error")
      assert.equal(500, r.status)
      assert.is_nil(r.headers["transfer-encoding"])
      assert_logged("failing.lua:19: stream handler failed", "stream handler")
      -- it had subscribed before failing: the subscription must not linger
      assert.equal("0", client.request(srv.port, "GET", "/subscribers/x").body)
      assert_serves()
    end)

    it("logs an error in a stream timer with file:line and keeps serving", function()
      local s = client.stream(srv.port, "/timer-error")
      assert.equal(200, s.status)
      assert_logged("failing.lua:24: stream timer failed", "stream timer")
      assert.matches("%[error%]", log_line("failing.lua:24: stream timer failed"))
      s:close()
      assert_serves()
      -- the server still streams to others
      local s2 = client.stream(srv.port, "/timer-error")
      assert.equal(200, s2.status)
      assert.is_true(s2:fill(2))
      s2:close()
    end)

    it("ends a stream whose timer failed instead of failing again every period", function()
      -- ARCHITECTURE principle 4: a Lua error becomes a 500 or a closed
      -- stream plus a log line, not a log line per timer period forever.
      local function count()
        local n = 0
        for _ in srv:log():gmatch("failing%.lua:24: stream timer failed") do n = n + 1 end
        return n
      end
      local s = client.stream(srv.port, "/timer-error")
      assert.equal(200, s.status)
      local before = count()
      -- wait (bounded) for the stream to end; the timer period is 0.05 s
      local deadline = socket.gettime() + 2
      while not s.ended and socket.gettime() < deadline do s:fill(0.2) end
      local ended = s.ended
      s:close()
      socket.sleep(0.2)
      local errors = count() - before
      assert.is_true(ended, ("the stream stayed open while its timer failed %d times"):format(errors))
      assert.equal(1, errors)
      assert_serves()
    end)
  end)

  describe("in scripts that fail to load", function()
    it("reports a syntax error with file:line and serves the other scripts", function()
      assert_logged("syntax.lua:4:", "syntax error")
      assert.matches("%[error%]", log_line("syntax.lua:4:"))
      assert.equal(404, client.request(srv.port, "GET", "/syntax").status)
      assert_serves()
    end)

    it("reports a runtime error at the top level with file:line", function()
      assert_logged("toplevel.lua:5:", "top-level error")
      assert.matches("%[error%]", log_line("toplevel.lua:5:"))
      assert.equal(404, client.request(srv.port, "GET", "/toplevel").status)
      assert_serves()
    end)

    it("reports a script that does not return the app", function()
      local line = log_line("noreturn.lua")
      assert.is_truthy(line, "noreturn.lua is not mentioned in the log:\n" .. srv:log())
      assert.matches("must return the app", line)
      assert.equal(404, client.request(srv.port, "GET", "/no-return").status)
    end)

    it("reports a script that returns something other than the app", function()
      local line = log_line("wrongreturn.lua")
      assert.is_truthy(line, "wrongreturn.lua is not mentioned in the log:\n" .. srv:log())
      assert.matches("must return the app", line)
      assert.equal(404, client.request(srv.port, "GET", "/wrong-return").status)
    end)

    it("counts the problems at start-up", function()
      assert_logged("4 problem(s) loading apps", "problem count")
    end)
  end)
end)

describe("script errors found by --check", function()
  it("exits non-zero and names each broken file with its line", function()
    local dir = server.tmpdir()
    os.execute("mkdir -p " .. dir .. "/apps")
    server.write_file(dir .. "/apps/good.lua", GOOD)
    server.write_file(dir .. "/apps/syntax.lua", SYNTAX)
    server.write_file(dir .. "/apps/toplevel.lua", TOPLEVEL)
    local root = os.getenv("SLUICE_ROOT") or "."
    local bin = os.getenv("SLUICE_BIN") or (root .. "/sluice")
    local out = server.sh(("%s --check %s/apps --lua-path %s/lua 2>&1; echo \"exit=$?\"")
      :format(bin, dir, root))
    os.execute("rm -rf " .. dir)
    assert.matches("syntax%.lua:4:", out)
    assert.matches("toplevel%.lua:5:", out)
    assert.matches("2 problem", out)
    assert.matches("exit=1", out)
  end)
end)
