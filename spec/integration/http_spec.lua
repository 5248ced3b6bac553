-- The HTTP core against bad and awkward input: every case gets a clear
-- status, the connection is closed when its input cannot be trusted, and
-- the server answers the next client as if nothing happened.
local server = require "server"
local raw = require "raw"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:get("/hello", function(req) return "hello" end)
app:post("/echo", function(req) return 200, req.body end)
app:put("/hello", function(req) return 204 end)
app:get("/headers", function(req)
  local n = 0
  for _ in pairs(req.headers) do n = n + 1 end
  return tostring(n)
end)
app:get("/header/:name", function(req) return "[" .. tostring(req.headers[req.params.name]) .. "]" end)
app:stream("/events", function(req, s) s:subscribe("main") end)

return app
]]

local LIMITS = {
  "--max-header-bytes", "1024",
  "--max-headers", "10",
  "--max-body-bytes", "1000",
  "--header-timeout", "0.5",
  "--keepalive-timeout", "1",
  "--no-watch",
}

local function describe_response(r, err)
  if not r then return "no response (" .. tostring(err) .. ")" end
  return ("%s (body %q)"):format(r.status_line, r.body or "")
end

describe("HTTP core", function()
  local srv

  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = LIMITS }
  end)
  teardown(function() srv:stop() end)

  -- A normal request on a fresh connection gets a normal answer.
  local function assert_serves()
    local r, err = raw.exchange(srv.port, raw.request("GET", "/hello"))
    assert(r, "the server stopped answering: " .. tostring(err))
    assert.equal(200, r.status)
    assert.equal("hello", r.body)
    assert.is_true(srv:running(), "the server process died")
  end

  -- Sends bytes on a fresh connection; expects status, then the close.
  local function expect_refused(bytes, status)
    local r, err, c = raw.exchange(srv.port, bytes)
    assert(r, "expected " .. status .. ", got " .. describe_response(r, err))
    assert.equal(status, r.status, describe_response(r, err))
    assert.equal("close", (r.headers.connection or ""):lower(), "no Connection: close on " .. status)
    assert.is_true(c:wait_closed(2), "the connection stayed open after " .. status)
    c:close()
    return r
  end

  describe("malformed requests", function()
    local cases = {
      { "an invalid method", "G@RBAGE / HTTP/1.1\r\nHost: a\r\n\r\n" },
      { "a header line without a colon", "GET /hello HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n" },
      { "a non-numeric Content-Length", "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n" },
      { "an HTTP/1.1 request without Host (RFC 9112 3.2)", "GET /hello HTTP/1.1\r\nAccept: */*\r\n\r\n" },
      { "two different Content-Lengths",
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd" },
      { "Content-Length with Transfer-Encoding: chunked (smuggling)",
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
      { "a bad chunk size", "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" },
      { "a NUL byte in a header name", "GET /hello HTTP/1.1\r\nHost: a\r\nX-\0: 1\r\n\r\n" },
      { "a space inside the target", "GET /hel lo HTTP/1.1\r\nHost: a\r\n\r\n" },
      { "an unknown protocol", "GET /hello SPDY/3\r\nHost: a\r\n\r\n" },
    }
    for _, case in ipairs(cases) do
      it("answers 400 and closes for " .. case[1], function()
        local r = expect_refused(case[2], 400)
        assert.matches("^400 Bad Request", r.body)
        assert_serves()
      end)
    end

    it("answers 400 for garbage after a good request on the same connection, having answered the good one", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/hello") .. "\1\2\3 not http\r\n\r\n"))
      local r1 = assert(c:read_response())
      assert.equal(200, r1.status)
      assert.equal("hello", r1.body)
      local r2, err = c:read_response()
      assert(r2, describe_response(r2, err))
      assert.equal(400, r2.status)
      assert.is_true(c:wait_closed(2))
      c:close()
      assert_serves()
    end)
  end)

  describe("size limits", function()
    it("answers 431 when the headers pass --max-header-bytes", function()
      local req = "GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " .. ("a"):rep(2000) .. "\r\n\r\n"
      expect_refused(req, 431)
      assert_serves()
    end)

    it("answers 431 when one header name alone passes the limit", function()
      local req = "GET /hello HTTP/1.1\r\nHost: a\r\nX-" .. ("n"):rep(2000) .. ": 1\r\n\r\n"
      expect_refused(req, 431)
      assert_serves()
    end)

    it("answers 431 when many small headers add up past the limit", function()
      local lines = { "GET /hello HTTP/1.1", "Host: a" }
      for i = 1, 8 do lines[#lines + 1] = ("X-H%d: %s"):format(i, ("v"):rep(150)) end
      expect_refused(table.concat(lines, "\r\n") .. "\r\n\r\n", 431)
      assert_serves()
    end)

    it("still answers 431 (not a reset) when the headers are far over the limit", function()
      -- More than the server reads at once: the rest is unread when it
      -- answers, and closing then must not destroy the answer.
      local req = "GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " .. ("a"):rep(200000) .. "\r\n\r\n"
      local c = assert(raw.connect(srv.port))
      c:send(req)   -- may fail part-way once the server has closed
      local r, err = c:read_response()
      c:close()
      assert(r, "expected 431, got " .. describe_response(r, err))
      assert.equal(431, r.status)
      assert_serves()
    end)

    it("accepts headers just under --max-header-bytes", function()
      local req = "GET /hello HTTP/1.1\r\nHost: a\r\nX-Pad: " .. ("p"):rep(900) .. "\r\n\r\n"
      assert(#req < 1024)
      local r = assert(raw.exchange(srv.port, req))
      assert.equal(200, r.status)
    end)

    it("answers 431 for one header field more than --max-headers", function()
      local lines = { "GET /hello HTTP/1.1", "Host: a" }
      for i = 1, 10 do lines[#lines + 1] = ("X-H%d: %d"):format(i, i) end   -- 11 fields
      expect_refused(table.concat(lines, "\r\n") .. "\r\n\r\n", 431)
      assert_serves()
    end)

    it("accepts exactly --max-headers header fields", function()
      local lines = { "GET /headers HTTP/1.1", "Host: a" }
      for i = 1, 9 do lines[#lines + 1] = ("X-H%d: %d"):format(i, i) end    -- 10 fields
      local r = assert(raw.exchange(srv.port, table.concat(lines, "\r\n") .. "\r\n\r\n"))
      assert.equal(200, r.status)
      assert.equal("10", r.body)
    end)

    it("answers 414 when the URL passes the limit", function()
      local req = "GET /hello?q=" .. ("u"):rep(2000) .. " HTTP/1.1\r\nHost: a\r\n\r\n"
      local r = expect_refused(req, 414)
      assert.matches("^414 URI Too Long", r.body)
      assert_serves()
    end)

    it("answers 413 from Content-Length alone, without waiting for the body", function()
      local c = assert(raw.connect(srv.port))
      -- the head only: an answer can come only if the server does not read the body
      assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"))
      local r, err = c:read_response { timeout = 3 }
      assert(r, "expected 413 before the body was sent, got " .. describe_response(r, err))
      assert.equal(413, r.status)
      assert.equal("close", (r.headers.connection or ""):lower())
      assert.is_true(c:wait_closed(2), "the connection stayed open after 413")
      c:close()
      assert_serves()
    end)

    it("answers 413 instead of 100 Continue when the announced body is too large", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"))
      local r, err = c:read_response { timeout = 3 }
      assert(r, describe_response(r, err))
      assert.equal(413, r.status)
      assert.is_true(c:wait_closed(2))
      c:close()
      assert_serves()
    end)

    it("answers 413 for a chunked body that grows past --max-body-bytes", function()
      local body = {}
      for _ = 1, 6 do body[#body + 1] = ("%x\r\n%s\r\n"):format(250, ("c"):rep(250)) end
      body[#body + 1] = "0\r\n\r\n"
      local req = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" .. table.concat(body)
      expect_refused(req, 413)
      assert_serves()
    end)

    it("answers 413 (not a reset) to a client still sending a large chunked body", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"))
      local chunk = ("%x\r\n%s\r\n"):format(16384, ("c"):rep(16384))
      for _ = 1, 12 do   -- 192 KiB, more than the server reads at once
        if not c:send(chunk, 1) then break end
      end
      local r, err = c:read_response { timeout = 3 }
      c:close()
      assert(r, "expected 413, got " .. describe_response(r, err))
      assert.equal(413, r.status)
      assert_serves()
    end)

    it("accepts a body of exactly --max-body-bytes, by length and chunked", function()
      local body = ("b"):rep(1000)
      local r = assert(raw.exchange(srv.port, raw.request("POST", "/echo", nil, body)))
      assert.equal(200, r.status)
      assert.equal(body, r.body)
      local chunked = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                      ("%x\r\n%s\r\n"):format(600, body:sub(1, 600)) ..
                      ("%x\r\n%s\r\n"):format(400, body:sub(601)) .. "0\r\n\r\n"
      local r2 = assert(raw.exchange(srv.port, chunked))
      assert.equal(200, r2.status)
      assert.equal(body, r2.body)
    end)
  end)

  describe("timeouts", function()
    it("answers 408 and closes when the head stalls half-way (slowloris)", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("GET /hello HTTP/1.1\r\nHost: a\r\nX-Slow: "))
      local r, err = c:read_response { timeout = 4 }
      assert(r, "expected 408, got " .. describe_response(r, err))
      assert.equal(408, r.status)
      assert.equal("close", (r.headers.connection or ""):lower())
      assert.is_true(c:wait_closed(2), "the connection stayed open after 408")
      c:close()
      assert_serves()
    end)

    it("does not restart the header clock for each byte that dribbles in", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("GET /hello HTTP/1.1\r\nHost: a\r\nX-Slow: "))
      -- one byte every 0.1 s for up to 4 s: only the --header-timeout of
      -- 0.5 s for the whole head can end this
      local answered
      for _ = 1, 40 do
        if not c:send("a") then break end
        if c:fill(0.1) or c.closed then answered = true; break end
      end
      assert.is_true(answered, "a dribbling client kept its connection past 4 s")
      local r, err = c:read_response { timeout = 2 }
      assert(r, describe_response(r, err))
      assert.equal(408, r.status)
      c:close()
      assert_serves()
    end)

    it("answers 408 when the body stalls after the head", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"))
      local r, err = c:read_response { timeout = 4 }
      assert(r, "expected 408, got " .. describe_response(r, err))
      assert.equal(408, r.status)
      assert.is_true(c:wait_closed(2))
      c:close()
      assert_serves()
    end)

    it("closes a connection that never sends anything", function()
      local c = assert(raw.connect(srv.port))
      assert.is_true(c:wait_closed(4), "a silent connection was kept open")
      if c.buf ~= "" then assert.matches("^HTTP/1%.1 408 ", c.buf) end
      c:close()
      assert_serves()
    end)

    it("keeps an idle keep-alive connection for a while, then closes it", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/hello")))
      local r = assert(c:read_response())
      assert.equal(200, r.status)
      assert.is_nil(r.headers.connection)
      -- well inside --keepalive-timeout 1: still usable
      socket.sleep(0.2)
      assert(c:send(raw.request("GET", "/hello")))
      local r2, err = c:read_response()
      assert(r2, "keep-alive connection closed early: " .. tostring(err))
      assert.equal(200, r2.status)
      -- then idle: closed without an answer
      assert.is_true(c:wait_closed(4), "an idle keep-alive connection was never closed")
      assert.equal("", c.buf)
      c:close()
      assert_serves()
    end)

    it("times out a half-sent second request on a keep-alive connection with 408", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/hello") .. "GET /hello HTTP/1.1\r\nHo"))
      local r1 = assert(c:read_response())
      assert.equal(200, r1.status)
      local r2, err = c:read_response { timeout = 4 }
      assert(r2, "expected 408, got " .. describe_response(r2, err))
      assert.equal(408, r2.status)
      assert.is_true(c:wait_closed(2))
      c:close()
    end)
  end)

  describe("routing answers", function()
    it("answers 404 for an unknown route and keeps the connection", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/nope")))
      local r = assert(c:read_response())
      assert.equal(404, r.status)
      assert.matches("^404 Not Found", r.body)
      assert(c:send(raw.request("GET", "/hello")))
      local r2 = assert(c:read_response())
      assert.equal(200, r2.status)
      c:close()
    end)

    it("answers 405 with an Allow header for a wrong method", function()
      local r = assert(raw.exchange(srv.port, raw.request("DELETE", "/hello")))
      assert.equal(405, r.status)
      assert.equal("GET, HEAD, PUT", r.headers.allow)
      assert.matches("^405 Method Not Allowed", r.body)
      assert_serves()
    end)

    it("answers 405 with Allow: GET, HEAD for a POST to a stream", function()
      local r = assert(raw.exchange(srv.port, raw.request("POST", "/events", nil, "x")))
      assert.equal(405, r.status)
      assert.equal("GET, HEAD", r.headers.allow)
    end)

    it("routes an absolute-form target by its path", function()
      local r = assert(raw.exchange(srv.port, "GET http://127.0.0.1/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
      assert.equal(200, r.status)
      assert.equal("hello", r.body)
    end)

    it("answers OPTIONS with 204 and the Allow header", function()
      local r = assert(raw.exchange(srv.port, raw.request("OPTIONS", "/hello")))
      assert.equal(204, r.status)
      assert.equal("GET, HEAD, PUT", r.headers.allow)
    end)
  end)

  describe("header values", function()
    it("are given to the script without surrounding whitespace", function()
      -- RFC 9110 5.5: leading and trailing whitespace is not part of a value
      local r = assert(raw.exchange(srv.port,
        "GET /header/x-color HTTP/1.1\r\nHost: a\r\nX-Color: \t green \t \r\n\r\n"))
      assert.equal(200, r.status)
      assert.equal("[green]", r.body)
    end)

    it("keep inner whitespace", function()
      local r = assert(raw.exchange(srv.port,
        "GET /header/x-words HTTP/1.1\r\nHost: a\r\nX-Words: two  words\r\n\r\n"))
      assert.equal("[two  words]", r.body)
    end)

    it("of a repeated header are joined with a comma", function()
      local r = assert(raw.exchange(srv.port,
        "GET /header/x-dup HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n"))
      assert.equal("[1, 2]", r.body)
    end)
  end)

  describe("Expect: 100-continue", function()
    it("sends 100 Continue before the body, then the answer", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"))
      local interim, err = c:read_response { timeout = 3 }
      assert(interim, "no 100 Continue before the body: " .. tostring(err))
      assert.equal(100, interim.status)
      assert.equal("", interim.body)
      assert(c:send("hello"))
      local r = assert(c:read_response())
      assert.equal(200, r.status)
      assert.equal("hello", r.body)
      c:close()
    end)

    it("is recognised with any capitalisation and surrounding whitespace", function()
      for _, value in ipairs { "100-Continue", "100-continue ", "  100-continue\t" } do
        local c = assert(raw.connect(srv.port))
        assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nExpect: " .. value .. "\r\nContent-Length: 2\r\n\r\n"))
        local interim, err = c:read_response { timeout = 2 }
        assert(interim, ("Expect: %q: no answer before the body: %s"):format(value, tostring(err)))
        assert.equal(100, interim.status, ("Expect: %q"):format(value))
        assert(c:send("ok"))
        local r = assert(c:read_response())
        assert.equal("ok", r.body)
        c:close()
      end
    end)

    it("sends it again for the next request on the same connection", function()
      local c = assert(raw.connect(srv.port))
      for i = 1, 2 do
        assert(c:send("POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"))
        local interim, err = c:read_response { timeout = 3 }
        assert(interim, ("request %d: no 100 Continue: %s"):format(i, tostring(err)))
        assert.equal(100, interim.status)
        assert(c:send("r" .. i))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal("r" .. i, r.body)
      end
      c:close()
    end)
  end)

  describe("HEAD", function()
    it("gets the headers of GET without a body", function()
      local c = assert(raw.connect(srv.port))
      -- HEAD then GET on one connection: a body sent for HEAD would be
      -- read as the start of the second answer
      assert(c:send(raw.request("HEAD", "/hello") .. raw.request("GET", "/hello")))
      local h = assert(c:read_response { method = "HEAD" })
      assert.equal(200, h.status)
      assert.equal("5", h.headers["content-length"])
      assert.matches("^text/plain", h.headers["content-type"])
      local g, err = c:read_response()
      assert(g, describe_response(g, err))
      assert.equal("HTTP/1.1 200 OK", g.status_line)
      assert.equal("hello", g.body)
      assert.is_false(c:fill(0.2))
      assert.equal("", c.buf)
      c:close()
    end)

    it("gets a 404 without a body", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("HEAD", "/nope") .. raw.request("GET", "/hello")))
      local h = assert(c:read_response { method = "HEAD" })
      assert.equal(404, h.status)
      local g, err = c:read_response()
      assert(g, describe_response(g, err))
      assert.equal("HTTP/1.1 200 OK", g.status_line)
      c:close()
    end)

    it("on a stream route gets the stream's headers and no stream", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("HEAD", "/events") .. raw.request("GET", "/hello")))
      local h = assert(c:read_response { method = "HEAD" })
      assert.equal(200, h.status)
      assert.equal("text/event-stream", h.headers["content-type"])
      assert.is_nil(h.headers["transfer-encoding"])
      local g, err = c:read_response()
      assert(g, describe_response(g, err))
      assert.equal("HTTP/1.1 200 OK", g.status_line)
      assert.equal("hello", g.body)
      c:close()
    end)
  end)
end)

describe("HTTP core over --max-conns", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--max-conns", "3", "--no-watch" } }
  end)
  teardown(function() srv:stop() end)

  it("answers 503 with Retry-After past the limit, and serves again once there is room", function()
    local held = {}
    for i = 1, 3 do
      local c = assert(raw.connect(srv.port))
      assert(c:send("GET /events HTTP/1.1\r\nHost: a\r\n\r\n"))
      local r, err = c:read_response { method = "HEAD" }   -- the head only
      assert(r, ("stream %d did not open: %s"):format(i, tostring(err)))
      assert.equal(200, r.status)
      held[i] = c
    end
    local r, err, c = raw.exchange(srv.port, raw.request("GET", "/hello"))
    assert(r, describe_response(r, err))
    assert.equal(503, r.status)
    assert.truthy(tonumber(r.headers["retry-after"]), "no numeric Retry-After")
    assert.is_true(c:wait_closed(2))
    c:close()
    -- the streams that hold the slots are untouched
    for _, h in ipairs(held) do assert.is_true(h:still_open(0.05)) end
    for _, h in ipairs(held) do h:close() end
    local ok = raw.eventually(function()
      local r2 = raw.exchange(srv.port, raw.request("GET", "/hello"))
      return r2 and r2.status == 200
    end, 3)
    assert.is_true(ok, "no room again after the streams closed")
  end)
end)
