-- sluice.testing's SSE parser follows the WHATWG EventSource rules: each
-- case is a stream text and what a browser would dispatch from it.
local sse = require "sluice.testing.sse"

-- { name, text, events = { { event, data, id, last_event_id } ... },
--   comments =, retry = }
local CASES = {
  { "one event", "data: hello\n\n", { { "message", "hello" } } },
  { "data lines joined with LF", "data: a\ndata: b\ndata\n\n", { { "message", "a\nb\n" } } },
  { "one space after the colon is dropped, not two", "data:  two\ndata:none\n\n",
    { { "message", " two\nnone" } } },
  { "CRLF, CR and LF are all line breaks", "data: a\r\ndata: b\rdata: c\n\r\n", { { "message", "a\nb\nc" } } },
  { "CR CR ends an event", "data: x\r\revent: e\rdata: y\r\r", { { "message", "x" }, { "e", "y" } } },
  { "a leading BOM is skipped once", "\239\187\191data: bom\n\n", { { "message", "bom" } } },
  { "a second BOM is part of the field name", "\239\187\191\239\187\191data: x\n\n", {} },
  { "comments are kept, never events", ": hi\n:\ndata: x\n\n", { { "message", "x" } }, comments = { " hi", "" } },
  { "no data line: nothing dispatched, type reset", "event: e\n\ndata: x\n\n", { { "message", "x" } } },
  { "an empty data line dispatches an empty event", "data\n\n", { { "message", "" } } },
  { "event names the type; empty means message", "event:\ndata: x\n\nevent: a\ndata: y\n\n",
    { { "message", "x" }, { "a", "y" } } },
  { "the last id persists across events", "id: 7\ndata: a\n\ndata: b\n\n",
    { { "message", "a", "7", "7" }, { "message", "b", nil, "7", no_id = true } } },
  { "an empty id resets it", "id: 7\ndata: a\n\nid\ndata: b\n\n",
    { { "message", "a", "7", "7" }, { "message", "b", "", "" } } },
  { "an id with NUL is ignored", "id: 5\ndata: a\n\nid: 6\0x\ndata: b\n\n",
    { { "message", "a", "5", "5" }, { "message", "b", nil, "5", no_id = true } } },
  { "retry: digits only", "retry: 1500\n\nretry: 2x\n\nretry: -1\n\n", {}, retry = 1500 },
  { "unknown fields are ignored", "foo: bar\ndata: x\nDATA: y\n\n", { { "message", "x" } } },
  { "an event not ended by a blank line is discarded", "data: a\n\ndata: cut", { { "message", "a" } } },
  { "UTF-8 passes through", "data: héllo ✓ 🚀\n\n", { { "message", "héllo ✓ 🚀" } } },
}

local function check(case, events, parser)
  local want = case[3]
  assert.equal(#want, #events, "event count")
  for i, w in ipairs(want) do
    assert.equal(w[1], events[i].event, "event " .. i .. " type")
    assert.equal(w[2], events[i].data, "event " .. i .. " data")
    if w[3] ~= nil then assert.equal(w[3], events[i].id, "event " .. i .. " id") end
    if w[4] ~= nil then assert.equal(w[4], events[i].last_event_id, "event " .. i .. " last id") end
    if w.no_id then assert.is_nil(events[i].id, "event " .. i .. " has no id line") end
  end
  if case.comments then assert.same(case.comments, parser.comments) end
  if case.retry then assert.equal(case.retry, parser.retry) end
end

describe("sluice.testing SSE parser", function()
  for _, case in ipairs(CASES) do
    it(case[1] .. " (whole)", function()
      local events, parser = sse.parse(case[2])
      check(case, events, parser)
    end)

    -- Every split point: a line break, a CRLF or a BOM cut in two must
    -- parse the same as the whole text.
    it(case[1] .. " (split at every byte)", function()
      for cut = 1, #case[2] - 1 do
        local p = sse.parser()
        local events = p:feed(case[2]:sub(1, cut))
        for _, ev in ipairs(p:feed(case[2]:sub(cut + 1))) do events[#events + 1] = ev end
        p:finish()
        check(case, events, p)
      end
    end)
  end

  it("one byte at a time", function()
    local text = "\239\187\191id: 1\r\nevent: e\r\ndata: a\r\ndata: b\r\n\r\n: c\rdata: z\r\r"
    local p = sse.parser()
    local events = {}
    for i = 1, #text do
      for _, ev in ipairs(p:feed(text:sub(i, i))) do events[#events + 1] = ev end
    end
    assert.equal(2, #events)
    assert.same({ "e", "a\nb", "1" }, { events[1].event, events[1].data, events[1].id })
    assert.same({ "message", "z", "1" }, { events[2].event, events[2].data, events[2].last_event_id })
    assert.same({ " c" }, p.comments)
  end)

  it("parses a long line in linear time (no rescanning)", function()
    local data = string.rep("x", 4 * 1024 * 1024)
    local t0 = os.clock()
    local events = sse.parse("data: " .. data .. "\n\n" .. string.rep("\r", 100000))
    assert.equal(data, events[1].data)
    assert.is_true(os.clock() - t0 < 2, "took " .. (os.clock() - t0) .. " s")
  end)
end)
