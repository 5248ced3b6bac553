-- Headers built to make a backtracking Lua pattern quadratic (a Cookie or
-- X-Traffic-Color of "a", 16,000 blanks, "b") used to take ~1 s of the
-- event loop each: with eight of them in flight, every other client waited
-- ~8 s. Sent in parallel to the shipped examples, they must get their
-- normal answer while a concurrent plain request is answered promptly.
local server = require "server"
local raw = require "raw"
local socket = require "socket"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local HOSTILE = 8
local BLANKS = ("a" .. (" "):rep(16000) .. "b")

local function start_copy(dir, env)
  local tmp = server.tmpdir()
  os.execute(("mkdir -p %s/apps && cp %s/%s/*.lua %s/apps/"):format(tmp, ROOT, dir, tmp))
  return server.start { dir = tmp, env = env, args = { "--max-header-bytes", "65536" } }
end

-- Sends `hostile` on HOSTILE connections at once, then (once the server
-- has them) the plain request; returns the seconds the plain request
-- took, its response, and the hostile responses.
local function under_attack(port, hostile, plain)
  local conns = {}
  for i = 1, HOSTILE do
    conns[i] = assert(raw.connect(port))
    assert(conns[i]:send(hostile))
  end
  socket.sleep(0.05)
  local t0 = socket.gettime()
  local r, err = raw.exchange(port, plain, { timeout = 30 })
  local took = socket.gettime() - t0
  assert(r, "plain request: " .. tostring(err))
  local answers = {}
  for i, c in ipairs(conns) do
    local a, e = c:read_response({ timeout = 30 })
    answers[i] = a or { status = e }
    c:close()
  end
  return took, r, answers
end

describe("hostile request headers", function()
  it("a Cookie of 16,000 blanks does not stall examples/orders", function()
    local srv = start_copy("examples/orders", "JWT_SECRET=spec-secret-0123456789")
    finally(function() srv:stop() end)
    local hostile = raw.request("GET", "/orders/42", { { "Cookie", BLANKS }, { "Accept", "text/event-stream" } })
    local plain = raw.request("GET", "/orders/42", { { "Cookie", "theme=dark" } })
    local took, r, answers = under_attack(srv.port, hostile, plain)
    assert.equal(401, r.status)   -- no token: the plain answer, promptly
    assert.is_true(took < 1, ("the plain request took %.2f s"):format(took))
    for i = 1, HOSTILE do assert.equal(401, answers[i].status, "hostile request " .. i) end
    assert.is_true(srv:running())
  end)

  it("an X-Traffic-Color of 16,000 blanks does not stall examples/rollout", function()
    local srv = start_copy("examples/rollout")
    finally(function() srv:stop() end)
    local plain = raw.request("GET", "/feed/stats", {})
    local conns, t0 = {}, nil
    for i = 1, HOSTILE do
      conns[i] = assert(raw.connect(srv.port))
      assert(conns[i]:send(raw.request("GET", "/feed", { { "X-Traffic-Color", BLANKS },
                                                         { "Accept", "text/event-stream" } })))
    end
    socket.sleep(0.05)
    t0 = socket.gettime()
    local r, err = raw.exchange(srv.port, plain, { timeout = 30 })
    local took = socket.gettime() - t0
    assert(r, "plain request: " .. tostring(err))
    assert.equal(200, r.status)
    assert.is_true(took < 1, ("the plain request took %.2f s"):format(took))
    for i, c in ipairs(conns) do
      -- a stream: its head says 200 and which variant (the blanks name none)
      assert.is_true(c:wait_for("\r\n\r\n", 30), "hostile stream " .. i .. " got no head")
      assert.matches("^HTTP/1%.1 200", c.buf)
      assert.matches("\r\n[Xx]%-[Vv]ariant: %a+\r\n", c.buf)
      c:close()
    end
    assert.is_true(srv:running())
  end)
end)
