-- Request smuggling: framing that sluice and a proxy in front of it could
-- read differently. Every such request is refused with 400 and the
-- connection closed, so nothing sent after it on the same connection (here
-- a GET /secret) is ever answered as a request of its own. Trailers of a
-- chunked body never become headers (RFC 9110 6.5.1). Good framing -
-- chunked bodies, keep-alive, pipelining - still works.
local server = require "server"
local raw = require "raw"
local jwt = require "sluice.jwt"

local SECRET = "smuggling-spec-secret-long-enough-1234"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
local auth = { algs = { "HS256" }, secret = "]] .. SECRET .. [[" }
local cors = { origins = { "https://app.example.com" } }

app:get("/me", function(req) return 200, "sub=" .. req.claims.sub end, { auth = auth })
app:post("/me", function(req) return 200, "sub=" .. req.claims.sub end, { auth = auth })
app:get("/cors", function(req) return 200, "cors" end, { cors = cors })
app:post("/cors", function(req) return 200, "cors" end, { cors = cors })
app:post("/echo", function(req) return 200, req.body end)
app:get("/hello", function(req) return 200, "hello" end)
app:get("/secret", function(req) return 200, "SECRET" end)
-- header names the script sees, sorted, then the body
local function names(req)
  local list = {}
  for k in pairs(req.headers) do list[#list + 1] = k end
  table.sort(list)
  return 200, table.concat(list, ",") .. "|" .. req.body
end
app:get("/names", names)
app:post("/names", names)
return app
]]

local LIMITS = { "--max-headers", "20", "--max-header-bytes", "2048", "--no-watch" }

-- What a proxy that read the bad message differently would forward as
-- the next request.
local SMUGGLED = "GET /secret HTTP/1.1\r\nHost: a\r\n\r\n"

local CHUNKED = "Transfer-Encoding: chunked\r\n"

local function describe_response(r, err)
  if not r then return "no response (" .. tostring(err) .. ")" end
  return ("%s (body %q)"):format(r.status_line, r.body or "")
end

local function token(sub)
  return jwt.sign({ sub = sub, exp = os.time() + 3600 }, { alg = "HS256", secret = SECRET })
end

-- Each row: what it is, the bad message, the status expected, and (for
-- the report) whether the build before strict parsing already refused it.
local REFUSED = {
  -- chunk framing (llhttp strict mode)
  { "a chunk not ended by CRLF (any two bytes passed)",
    "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "\r\n5\r\nhelloXX0\r\n\r\n" },
  { "a chunk ended by LF alone",
    "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "\r\n5\r\nhello\n0\r\n\r\n", before = true },
  { "a chunk size line ended by CR and another byte",
    "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "\r\n5\rXhello\r\n0\r\n\r\n" },
  { "a last chunk not followed by CRLF",
    "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "\r\n5\r\nhello\r\n0\r\n\rX" },
  -- the length of the body
  { "Content-Length with Transfer-Encoding",
    "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n" .. CHUNKED .. "\r\n0\r\n\r\n", before = true },
  { "Transfer-Encoding before Content-Length",
    "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "Content-Length: 5\r\n\r\n0\r\n\r\n", before = true },
  { "two differing Content-Lengths",
    "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", before = true },
  { "a Content-Length list",
    "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", before = true },
  { "a Transfer-Encoding whose final coding is not chunked",
    "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", before = true },
  { "a Transfer-Encoding without chunked",
    "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd", before = true },
  { "Transfer-Encoding in an HTTP/1.0 request",
    "POST /echo HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n" .. CHUNKED .. "\r\n5\r\nhello\r\n0\r\n\r\n" },
  -- obs-fold (RFC 9112 5.2)
  { "obs-fold in Transfer-Encoding",
    "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" },
  { "obs-fold in Transfer-Encoding after a coding",
    "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    before = true },
  { "obs-fold with a space in any header", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note: one\r\n two\r\n\r\n" },
  { "obs-fold with a tab in any header", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note: one\r\n\ttwo\r\n\r\n" },
  -- header names and Host
  { "two Host headers", "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" },
  { "a Host that is not a host", "GET /hello HTTP/1.1\r\nHost: evil.example@a\r\n\r\n" },
  { "a Host with a space inside", "GET /hello HTTP/1.1\r\nHost: a b\r\n\r\n" },
  { "an empty header name", "GET /hello HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n" },
  { "whitespace between a header name and its colon", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note : 1\r\n\r\n" },
  { "whitespace between Content-Length and its colon",
    "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length : " .. #SMUGGLED .. "\r\n\r\n", before = true },
  { "whitespace between Transfer-Encoding and its colon",
    "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", before = true },
  { "a tab in a header name", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note\t: 1\r\n\r\n", before = true },
  -- header values
  { "a NUL in a header value", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note: a\0b\r\n\r\n", before = true },
  { "a CR alone in a header value", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note: a\rb\r\n\r\n", before = true },
  { "a LF alone in a header value", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note: a\nb\r\n\r\n", before = true },
  { "a control byte in a header value", "GET /hello HTTP/1.1\r\nHost: a\r\nX-Note: a\1b\r\n\r\n", before = true },
  -- the request line
  { "an invalid character in the method", "GE@T /hello HTTP/1.1\r\nHost: a\r\n\r\n", before = true },
  { "a lower-case method", "get /hello HTTP/1.1\r\nHost: a\r\n\r\n", before = true },
  { "a tab in the target", "GET /hel\tlo HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "a DEL in the target", "GET /hel\127lo HTTP/1.1\r\nHost: a\r\n\r\n", before = true },
  { "a raw non-ASCII byte in the target", "GET /h\195\169llo HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "a quote in the target", "GET /hello?q=\"x\" HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "angle brackets in the target", "GET /hello?q=<b> HTTP/1.1\r\nHost: a\r\n\r\n" },
}

describe("request smuggling", function()
  local srv

  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = LIMITS }
  end)
  teardown(function() srv:stop() end)

  local function assert_serves()
    local r, err = raw.exchange(srv.port, raw.request("GET", "/hello"))
    assert(r, "the server stopped answering: " .. tostring(err))
    assert.equal(200, r.status)
    assert.equal("hello", r.body)
  end

  -- Sends bytes followed by a GET /secret in one write. Expects status,
  -- Connection: close, the close, and no answer to the GET.
  local function expect_refused(bytes, status)
    local c = assert(raw.connect(srv.port))
    assert(c:send(bytes .. SMUGGLED))
    local r, err = c:read_response()
    assert(r, "expected " .. status .. ", got " .. describe_response(r, err))
    assert.equal(status, r.status, describe_response(r, err))
    assert.equal("close", (r.headers.connection or ""):lower(), "no Connection: close on " .. status)
    assert.is_true(c:wait_closed(2), "the connection stayed open after " .. status)
    assert.is_nil(c.buf:find("HTTP/1.1", 1, true), "a second answer came: " .. c.buf)
    c:close()
  end

  describe("refuses with 400 and closes", function()
    for _, row in ipairs(REFUSED) do
      it(row[1], function()
        expect_refused(row[2], 400)
      end)
    end

    it("and serves the next client as usual", function()
      assert_serves()
    end)
  end)

  describe("chunked trailers", function()
    -- A chunked body whose trailer section is given.
    local function chunked(method, path, trailers, headers)
      return method .. " " .. path .. " HTTP/1.1\r\nHost: a\r\n" .. (headers or "") .. CHUNKED ..
             "\r\n5\r\nhello\r\n0\r\n" .. trailers .. "\r\n"
    end

    it("do not authenticate a GET (an Authorization trailer is not a header)", function()
      -- the token is good: as a header it authenticates
      local ok = assert(raw.exchange(srv.port,
        chunked("GET", "/me", "", "Authorization: Bearer " .. token("alice") .. "\r\n")))
      assert.equal(200, ok.status)
      assert.equal("sub=alice", ok.body)
      local r, err = raw.exchange(srv.port,
        chunked("GET", "/me", "Authorization: Bearer " .. token("mallory") .. "\r\n"))
      assert(r, describe_response(r, err))
      assert.equal(401, r.status, describe_response(r, err))
    end)

    it("do not authenticate a POST", function()
      local r, err = raw.exchange(srv.port,
        chunked("POST", "/me", "Authorization: Bearer " .. token("mallory") .. "\r\n"))
      assert(r, describe_response(r, err))
      assert.equal(401, r.status, describe_response(r, err))
    end)

    it("do not get CORS headers for an Origin trailer", function()
      local ok = assert(raw.exchange(srv.port,
        chunked("GET", "/cors", "", "Origin: https://app.example.com\r\n")))
      assert.equal("https://app.example.com", ok.headers["access-control-allow-origin"])
      for _, method in ipairs { "GET", "POST" } do
        local r = assert(raw.exchange(srv.port,
          chunked(method, "/cors", "Origin: https://app.example.com\r\n")))
        assert.equal(200, r.status)
        assert.is_nil(r.headers["access-control-allow-origin"], method .. " got CORS headers")
      end
    end)

    it("are dropped while the body still arrives, and the connection goes on", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(chunked("POST", "/names", "X-Trailer: 1\r\nHost: evil\r\n") .. raw.request("GET", "/hello")))
      local r = assert(c:read_response())
      assert.equal(200, r.status)
      assert.equal("host,transfer-encoding|hello", r.body)
      local r2 = assert(c:read_response())
      assert.equal("hello", r2.body)
      c:close()
    end)

    it("still count toward --max-headers", function()
      local t = {}
      for i = 1, 30 do t[#t + 1] = "X-T" .. i .. ": 1\r\n" end
      expect_refused(chunked("POST", "/echo", table.concat(t)), 431)
    end)

    it("still count toward --max-header-bytes", function()
      expect_refused(chunked("POST", "/echo", "X-Big: " .. ("b"):rep(3000) .. "\r\n"), 431)
    end)
  end)

  describe("still serves good framing", function()
    it("a chunked body in several chunks, with extensions and a trailer", function()
      local r = assert(raw.exchange(srv.port,
        "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED ..
        "\r\n6;name=value\r\nhello \r\nA\r\nworld, 10!\r\n0\r\nX-Sum: 1\r\n\r\n"))
      assert.equal(200, r.status)
      assert.equal("hello world, 10!", r.body)
    end)

    it("a chunked body sent a byte at a time", function()
      local bytes = "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "\r\n5\r\nhello\r\n0\r\nX: 1\r\n\r\n"
      local cuts = {}
      for i = 1, #bytes - 1 do cuts[#cuts + 1] = i end
      local c = assert(raw.connect(srv.port))
      assert(c:send_split(bytes, cuts, 0.001))
      local r = assert(c:read_response())
      assert.equal("hello", r.body)
      c:close()
    end)

    it("header values with inner, leading and trailing whitespace split across reads", function()
      -- each piece ends where a lenient fold check would mistake a split
      -- read for a line break
      local bytes = "GET /names HTTP/1.1\r\nHost: a\r\nX-A: one \t two \r\nX-B:\t \r\n\r\n"
      local c = assert(raw.connect(srv.port))
      assert(c:send_split(bytes, { 34, 35, 39, 40, 45, 47, 52 }, 0.005))
      local r = assert(c:read_response())
      assert.equal(200, r.status)
      assert.equal("host,x-a,x-b|", r.body)
      c:close()
    end)

    it("keep-alive: one request after another on one connection", function()
      local c = assert(raw.connect(srv.port))
      for i = 1, 3 do
        assert(c:send(raw.request("POST", "/echo", nil, "body " .. i)))
        local r = assert(c:read_response())
        assert.equal("body " .. i, r.body)
      end
      assert.is_true(c:still_open(0.1))
      c:close()
    end)

    it("pipelining: a chunked request between two others, answered in order", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send(raw.request("GET", "/hello") ..
        "POST /echo HTTP/1.1\r\nHost: a\r\n" .. CHUNKED .. "\r\n3\r\nabc\r\n0\r\n\r\n" ..
        raw.request("POST", "/echo", nil, "last")))
      assert.equal("hello", assert(c:read_response()).body)
      assert.equal("abc", assert(c:read_response()).body)
      assert.equal("last", assert(c:read_response()).body)
      c:close()
    end)

    it("an empty Host, an IP literal Host, and obs-text in a value", function()
      for _, host in ipairs { "", "[::1]:8080", "127.0.0.1:80", "xn--bcher-kva.example" } do
        local r = assert(raw.exchange(srv.port, "GET /hello HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"))
        assert.equal(200, r.status, "Host: " .. host)
      end
      local r = assert(raw.exchange(srv.port, "GET /names HTTP/1.1\r\nHost: a\r\nX-Name: caf\233\r\n\r\n"))
      assert.equal("host,x-name|", r.body)
    end)

    it("a query with characters browsers leave unencoded", function()
      local r = assert(raw.exchange(srv.port, "GET /hello?f={a}|b^c`d[e]\\ HTTP/1.1\r\nHost: a\r\n\r\n"))
      assert.equal(200, r.status)
    end)

    it("and after Connection: close answers once and closes, not the request behind", function()
      local c = assert(raw.connect(srv.port))
      assert(c:send("GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" .. SMUGGLED))
      local r = assert(c:read_response())
      assert.equal("hello", r.body)
      assert.is_true(c:wait_closed(2))
      assert.is_nil(c.buf:find("SECRET", 1, true))
      c:close()
    end)
  end)
end)
