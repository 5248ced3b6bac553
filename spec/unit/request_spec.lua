package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

local request = require "sluice.request"

-- The core hands headers over with lower-case names.
local function req(t)
  t = t or {}
  return request.new(t.method or "GET", t.path or "/x", t.query, t.headers, t.body,
                     t.peer or "127.0.0.1", t.params)
end

describe("sluice.request", function()
  describe("fields", function()
    it("carries what the core passed", function()
      local r = req { method = "POST", path = "/orders/7", query = "a=1", body = "hi",
                      params = { id = "7" }, peer = "::1" }
      assert.equal("POST", r.method)
      assert.equal("/orders/7", r.path)
      assert.equal("a=1", r.query_string)
      assert.equal("hi", r.body)
      assert.equal("::1", r.remote_addr)
      assert.same({ id = "7" }, r.params)
    end)

    it("has safe defaults for what is missing", function()
      local r = request.new("GET", "/")
      assert.equal("", r.query_string)
      assert.equal("", r.body)
      assert.same({}, r.params)
      assert.same({}, r.query)
      assert.same({}, r.cookies)
      assert.is_nil(r.headers["X-Anything"])
    end)

    it("returns nil for an unknown field instead of failing", function()
      assert.is_nil(req().no_such_field)
    end)
  end)

  describe("headers", function()
    local r = req { headers = { ["content-type"] = "text/plain", ["x-traffic-color"] = "green" } }

    it("are found by any capitalisation", function()
      assert.equal("text/plain", r.headers["content-type"])
      assert.equal("text/plain", r.headers["Content-Type"])
      assert.equal("text/plain", r.headers["CONTENT-TYPE"])
      assert.equal("green", r.headers["X-Traffic-Color"])
      assert.equal("green", r.headers["x-TRAFFIC-color"])
    end)

    it("are nil when absent, whatever the case", function()
      assert.is_nil(r.headers["Authorization"])
      assert.is_nil(r.headers.authorization)
      assert.is_nil(r.headers[1])
    end)

    it("can be iterated with their lower-case names", function()
      local names = {}
      for k in pairs(r.headers) do names[#names + 1] = k end
      table.sort(names)
      assert.same({ "content-type", "x-traffic-color" }, names)
    end)
  end)

  describe("query", function()
    it("is parsed on first use only, then kept", function()
      local r = req { query = "a=1" }
      assert.is_nil(rawget(r, "query"))
      local q = r.query
      assert.same({ a = "1" }, q)
      assert.equal(q, rawget(r, "query"))
      assert.equal(q, r.query)   -- the same table: not parsed again
    end)

    it("is not parsed when the handler never reads it", function()
      local parse = request.parse_query
      local calls = 0
      request.parse_query = function(...) calls = calls + 1; return parse(...) end
      local ok, err = pcall(function()
        local r = req { query = "a=1" }
        local _ = r.path, r.headers.host, r.params
        assert.equal(0, calls)
        local _q = r.query
        local _q2 = r.query
        assert.equal(1, calls)
      end)
      request.parse_query = parse
      assert(ok, err)
    end)

    it("keeps the first value of a repeated key", function()
      assert.same({ a = "1", b = "x" }, req({ query = "a=1&b=x&a=2&a=3" }).query)
    end)

    it("decodes + as a space and %XX escapes in keys and values", function()
      local q = req({ query = "name=J%C3%B3+Doe&a%20b=c+d&plus=%2B&pct=100%25" }).query
      assert.equal("Jó Doe", q.name)
      assert.equal("c d", q["a b"])
      assert.equal("+", q.plus)           -- an encoded + stays a plus
      assert.equal("100%", q.pct)
    end)

    it("decodes only once (%2520 is %20, not a space)", function()
      assert.equal("%20", req({ query = "v=%2520" }).query.v)
    end)

    it("gives a key without a value the empty string", function()
      local q = req({ query = "flag&empty=&x=1" }).query
      assert.equal("", q.flag)
      assert.equal("", q.empty)
      assert.equal("1", q.x)
    end)

    it("keeps '=' after the first as part of the value", function()
      assert.equal("a=b=c", req({ query = "token=a=b=c" }).query.token)
    end)

    it("ignores empty pairs and empty keys", function()
      local q = req({ query = "&&a=1&&=orphan&" }).query
      assert.same({ a = "1" }, q)
    end)

    it("leaves a malformed escape as it is", function()
      assert.equal("50%off", req({ query = "d=50%off" }).query.d)
      assert.equal("%", req({ query = "d=%" }).query.d)
    end)

    it("is empty for an empty query string", function()
      assert.same({}, req({ query = "" }).query)
    end)
  end)

  describe("cookies", function()
    local function cookies(header)
      return req({ headers = { cookie = header } }).cookies
    end

    it("are parsed from the Cookie header", function()
      assert.same({ session = "abc", theme = "dark" }, cookies("session=abc; theme=dark"))
    end)

    it("are parsed on first use only", function()
      local r = req { headers = { cookie = "a=1" } }
      assert.is_nil(rawget(r, "cookies"))
      assert.same({ a = "1" }, r.cookies)
      assert.equal(rawget(r, "cookies"), r.cookies)
    end)

    it("tolerate missing and extra whitespace", function()
      assert.same({ a = "1", b = "2", c = "3" }, cookies("a=1;b=2 ;  c = 3 "))
    end)

    it("lose the quotes around a quoted value", function()
      assert.same({ q = "quoted value", e = "" }, cookies('q="quoted value"; e=""'))
    end)

    it("keep the first of a repeated name", function()
      assert.same({ id = "first" }, cookies("id=first; id=second"))
    end)

    it("keep '=' inside a value", function()
      assert.equal("YWJj==", cookies("b64=YWJj==").b64)
    end)

    it("skip pieces without a name", function()
      assert.same({ ok = "1" }, cookies("=novalue; ok=1; ;"))
    end)

    it("are empty without a Cookie header", function()
      assert.same({}, req().cookies)
    end)
  end)
end)
