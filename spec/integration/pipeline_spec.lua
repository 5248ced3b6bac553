-- Keep-alive and pipelining: requests sent back to back on one connection,
-- in one write or cut anywhere, are answered in order, each with its own
-- body; HTTP/1.0 and Connection: close end the connection after the answer.
local server = require "server"
local raw = require "raw"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:get("/n/:n", function(req) return "n=" .. req.params.n end)
app:post("/echo", function(req) return 200, req.body, { ["X-Len"] = tostring(#req.body) } end)
app:get("/big/:n", function(req) return string.rep(req.params.n, 100000) end)
app:stream("/events", function(req, s) s:subscribe("pipeline") end)

return app
]]

local function chunked_post(path, pieces)
  local out = { ("POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"):format(path) }
  for _, p in ipairs(pieces) do out[#out + 1] = ("%x\r\n%s\r\n"):format(#p, p) end
  out[#out + 1] = "0\r\n\r\n"
  return table.concat(out)
end

-- A mixed pipeline and what each answer must be.
local function mixed()
  local reqs, expect = {}, {}
  local function add(bytes, status, body, method)
    reqs[#reqs + 1] = bytes
    expect[#expect + 1] = { status = status, body = body, method = method }
  end
  add(raw.request("GET", "/n/1"), 200, "n=1")
  add(raw.request("POST", "/echo", nil, "first body"), 200, "first body")
  add(raw.request("HEAD", "/n/2"), 200, "", "HEAD")
  add(raw.request("GET", "/missing"), 404, "404 Not Found\n")
  add(chunked_post("/echo", { "chunk", "ed ", "body" }), 200, "chunked body")
  add(raw.request("POST", "/echo", nil, "GET /n/666 HTTP/1.1\r\n\r\n"), 200, "GET /n/666 HTTP/1.1\r\n\r\n")
  add(raw.request("DELETE", "/n/3"), 405, "405 Method Not Allowed\n")
  add(raw.request("GET", "/n/4?x=1"), 200, "n=4")
  return table.concat(reqs), expect
end

local function read_all(c, expect, label)
  for i, e in ipairs(expect) do
    local r, err = c:read_response { method = e.method }
    assert(r, ("%s: answer %d missing: %s"):format(label, i, tostring(err)))
    assert.equal(e.status, r.status, ("%s: answer %d"):format(label, i))
    assert.equal(e.body, r.body, ("%s: answer %d"):format(label, i))
  end
end

describe("pipelining", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch", "--max-queued-bytes", "65536" } }
  end)
  teardown(function() srv:stop() end)

  it("answers many requests sent in one write, in order", function()
    local c = assert(raw.connect(srv.port))
    local reqs = {}
    for i = 1, 50 do reqs[i] = raw.request("GET", "/n/" .. i) end
    assert(c:send(table.concat(reqs)))
    for i = 1, 50 do
      local r, err = c:read_response()
      assert(r, ("answer %d missing: %s"):format(i, tostring(err)))
      assert.equal(200, r.status)
      assert.equal("n=" .. i, r.body)
    end
    assert.is_false(c:fill(0.1))   -- nothing more, nothing left over
    assert.equal("", c.buf)
    assert.is_false(c.closed)
    c:close()
  end)

  it("answers a mixed pipeline (bodies, chunked, HEAD, 404, 405) in order", function()
    local bytes, expect = mixed()
    local c = assert(raw.connect(srv.port))
    assert(c:send(bytes))
    read_all(c, expect, "one write")
    assert.is_false(c:fill(0.1))
    assert.equal("", c.buf)
    c:close()
  end)

  it("answers the same pipeline cut at awkward byte boundaries", function()
    local bytes, expect = mixed()
    -- cut inside CRLFs, inside "HTTP/1.1", between head and body, inside a
    -- body, inside a chunk-size line, inside the final 0 chunk
    local cuts = {}
    local function cut_after(pat, off, init)
      local s = bytes:find(pat, init or 1, true)
      assert(s, pat)
      cuts[#cuts + 1] = s + off
      return s
    end
    cut_after("\r\n", 0)                      -- between \r and \n
    cut_after("HTTP/1.1", 5)                  -- "HTTP/1" | ".1"
    cut_after("Content-Length", 3)            -- inside a header name
    local p = cut_after("\r\n\r\nfirst", 1)   -- inside the blank line
    cut_after("first body", 5, p)             -- inside a body
    cut_after("Transfer-Encoding: chunked\r\n\r\n5\r", 30)   -- in the size line
    cut_after("\r\n0\r\n\r\n", 3)             -- inside the last chunk
    cut_after("DELETE", 2)
    -- and every byte of the last request on its own
    local last = bytes:find("GET /n/4", 1, true)
    for i = last, #bytes - 1 do cuts[#cuts + 1] = i end
    local c = assert(raw.connect(srv.port))
    assert(c:send_split(bytes, cuts, 0.003))
    read_all(c, expect, "split writes")
    c:close()
  end)

  it("answers a pipeline sent one byte at a time", function()
    local reqs = raw.request("GET", "/n/1") .. raw.request("POST", "/echo", nil, "ab") ..
                 raw.request("GET", "/n/2")
    local cuts = {}
    for i = 1, #reqs - 1 do cuts[i] = i end
    local c = assert(raw.connect(srv.port))
    assert(c:send_split(reqs, cuts, 0.001))
    read_all(c, { { status = 200, body = "n=1" }, { status = 200, body = "ab" },
                  { status = 200, body = "n=2" } }, "byte by byte")
    c:close()
  end)

  it("answers a pipeline whose answers are far larger than the socket buffers", function()
    local c = assert(raw.connect(srv.port))
    local reqs = {}
    for i = 1, 20 do reqs[i] = raw.request("GET", "/big/" .. (i % 10)) end
    assert(c:send(table.concat(reqs)))
    for i = 1, 20 do
      local r, err = c:read_response { timeout = 10 }
      assert(r, ("answer %d missing: %s"):format(i, tostring(err)))
      assert.equal(200, r.status)
      assert.equal(100000, #r.body)
      assert.equal(string.rep(tostring(i % 10), 100000), r.body, "answer " .. i)
    end
    c:close()
  end)

  it("answers every pipelined request when the client half-closes right after sending", function()
    -- 2,000 requests, far more answers than --max-queued-bytes holds, then
    -- shutdown(SHUT_WR): every request read must still be answered, and
    -- only then does the server close.
    local N = 2000
    local c = assert(raw.connect(srv.port))
    local reqs = {}
    for i = 1, N do reqs[i] = raw.request("GET", "/n/" .. i) end
    assert(c:send(table.concat(reqs), 10))
    c.sock:shutdown("send")
    for i = 1, N do
      local r, err = c:read_response { timeout = 5 }
      assert(r, ("answer %d of %d missing: %s"):format(i, N, tostring(err)))
      assert.equal(200, r.status)
      assert.equal("n=" .. i, r.body)
    end
    assert.is_true(c:wait_closed(5), "connection left open after the last answer")
    assert.equal("", c.buf)
    c:close()
  end)

  it("answers requests before a stream, then streams", function()
    local c = assert(raw.connect(srv.port))
    assert(c:send(raw.request("GET", "/n/1") .. raw.request("GET", "/events")))
    local r1 = assert(c:read_response())
    assert.equal("n=1", r1.body)
    local r2 = assert(c:read_response { method = "HEAD" })
    assert.equal(200, r2.status)
    assert.equal("text/event-stream", r2.headers["content-type"])
    c:close()
  end)
end)

describe("connection lifetime", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch" } }
  end)
  teardown(function() srv:stop() end)

  it("closes an HTTP/1.0 connection after the answer", function()
    local c = assert(raw.connect(srv.port))
    assert(c:send("GET /n/10 HTTP/1.0\r\n\r\n"))
    local r = assert(c:read_response())
    assert.equal(200, r.status)
    assert.equal("n=10", r.body)
    assert.equal("close", (r.headers.connection or ""):lower())
    assert.is_true(c:wait_closed(2), "HTTP/1.0 connection left open")
    c:close()
  end)

  it("answers only the first of pipelined HTTP/1.0 requests", function()
    local c = assert(raw.connect(srv.port))
    assert(c:send("GET /n/1 HTTP/1.0\r\n\r\nGET /n/2 HTTP/1.0\r\n\r\n"))
    local r = assert(c:read_response())
    assert.equal("n=1", r.body)
    assert.is_true(c:wait_closed(2))
    assert.equal("", c.buf)
    c:close()
  end)

  it("keeps an HTTP/1.0 connection that asks for keep-alive", function()
    local c = assert(raw.connect(srv.port))
    for i = 1, 2 do
      assert(c:send(("GET /n/%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):format(i)))
      local r, err = c:read_response()
      assert(r, ("answer %d: %s"):format(i, tostring(err)))
      assert.equal("n=" .. i, r.body)
      assert.equal("keep-alive", (r.headers.connection or ""):lower())
    end
    c:close()
  end)

  it("honours Connection: close, ignoring anything pipelined after it", function()
    local c = assert(raw.connect(srv.port))
    assert(c:send(raw.request("GET", "/n/1") ..
                  raw.request("GET", "/n/2", { { "Connection", "close" } }) ..
                  raw.request("GET", "/n/3")))
    local r1 = assert(c:read_response())
    assert.equal("n=1", r1.body)
    assert.is_nil(r1.headers.connection)
    local r2 = assert(c:read_response())
    assert.equal("n=2", r2.body)
    assert.equal("close", (r2.headers.connection or ""):lower())
    assert.is_true(c:wait_closed(2), "connection left open after Connection: close")
    assert.equal("", c.buf, "answered a request after Connection: close")
    c:close()
  end)

  it("honours Connection: close in any case and among other tokens", function()
    local c = assert(raw.connect(srv.port))
    assert(c:send(raw.request("GET", "/n/1", { { "Connection", "TE, Close" } })))
    local r = assert(c:read_response())
    assert.equal("n=1", r.body)
    assert.equal("close", (r.headers.connection or ""):lower())
    assert.is_true(c:wait_closed(2))
    c:close()
  end)

  it("ignores an Upgrade offer (h2c, websocket) and keeps serving HTTP/1.1 on the connection", function()
    -- e.g. `curl --http2 http://...` offers h2c; the server does not take
    -- it, so the connection stays plain HTTP/1.1 (RFC 9110 7.8)
    for _, offer in ipairs { "h2c", "websocket" } do
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/n/1", { { "Connection", "Upgrade" }, { "Upgrade", offer } }) ..
                    raw.request("GET", "/n/2")))
      local r1, err1 = c:read_response()
      assert(r1, offer .. ": first answer: " .. tostring(err1))
      assert.equal(200, r1.status)
      assert.equal("n=1", r1.body)
      local r2, err2 = c:read_response()
      assert(r2, offer .. ": second answer: " .. tostring(err2))
      assert.equal(200, r2.status, ("%s: second request on the connection got %s"):format(offer, r2.status_line))
      assert.equal("n=2", r2.body)
      c:close()
    end
  end)

  it("still answers requests sent before the client half-closes its side", function()
    -- e.g. `printf ... | nc`: the client shuts down writing, then reads
    local c = assert(raw.connect(srv.port))
    assert(c:send(raw.request("GET", "/n/1") .. raw.request("GET", "/big/7")))
    c.sock:shutdown("send")
    local r1, err1 = c:read_response()
    assert(r1, "first answer: " .. tostring(err1))
    assert.equal("n=1", r1.body)
    local r2, err2 = c:read_response { timeout = 5 }
    assert(r2, "second answer: " .. tostring(err2))
    assert.equal(100000, #r2.body)
    c:close()
  end)
end)
