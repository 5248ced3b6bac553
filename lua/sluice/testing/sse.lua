-- sluice.testing.sse: an incremental parser of text/event-stream, following
-- the WHATWG HTML "Server-sent events" interpretation rules, so a spec
-- sees exactly what a browser's EventSource would dispatch:
--
--   * one leading U+FEFF (BOM) is skipped;
--   * lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF
--     at the start of the next are one line break);
--   * a line starting with ":" is a comment (kept in .comments, never an
--     event);
--   * "field: value" (one space after the colon is dropped), or a line
--     without a colon, which is a field with an empty value;
--   * data lines are joined with "\n"; an event with no data line is not
--     dispatched; the event type defaults to "message";
--   * id sets the last event id, which persists across events, unless its
--     value contains NUL; retry is taken only when it is all ASCII digits;
--     unknown fields are ignored;
--   * a blank line dispatches; an event not ended by a blank line when the
--     stream ends is discarded (call finish()).
--
--   local p = sse.parser()
--   local events = p:feed(bytes)   -- list of { event=, data=, id=, last_event_id= }
--   p.comments, p.retry, p.last_event_id
--
-- An event's `id` is the id line of that event (nil when it had none);
-- `last_event_id` is what EventSource puts in MessageEvent.lastEventId and
-- sends back as Last-Event-ID on reconnect.
--
-- The scan uses plain string.find with a one-class pattern from a moving
-- position: linear in the input, no backtracking.
local find, sub, byte = string.find, string.sub, string.byte
local concat = table.concat

local M = {}
local Parser = {}
Parser.__index = Parser

local CR, LF = 13, 10

function M.parser()
  return setmetatable({
    pending = "",          -- bytes not yet ended by a line break
    skip_lf = false,       -- the last chunk ended with CR: drop a leading LF
    started = false,       -- BOM check done
    data = {}, has_data = false, event_type = "",
    own_id = nil,
    last_event_id = "",
    retry = nil,
    comments = {},
  }, Parser)
end

local function all_digits(s)
  return s ~= "" and not find(s, "[^0-9]")
end

-- Handles one complete line; returns an event when the line dispatches one.
function Parser:line(line)
  if line == "" then
    if not self.has_data then
      self.data, self.event_type, self.own_id = {}, "", nil
      return nil
    end
    local ev = { event = self.event_type ~= "" and self.event_type or "message",
                 data = concat(self.data, "\n"), id = self.own_id,
                 last_event_id = self.last_event_id }
    self.data, self.has_data, self.event_type, self.own_id = {}, false, "", nil
    return ev
  end
  if byte(line, 1) == 58 then -- ":"
    self.comments[#self.comments + 1] = sub(line, 2)
    return nil
  end
  local field, value
  local colon = find(line, ":", 1, true)
  if colon then
    field = sub(line, 1, colon - 1)
    value = sub(line, colon + 1)
    if byte(value, 1) == 32 then value = sub(value, 2) end
  else
    field, value = line, ""
  end
  if field == "data" then
    self.data[#self.data + 1] = value
    self.has_data = true
  elseif field == "event" then
    self.event_type = value
  elseif field == "id" then
    if not find(value, "\0", 1, true) then
      self.last_event_id = value
      self.own_id = value
    end
  elseif field == "retry" then
    if all_digits(value) then self.retry = tonumber(value) end
  end
  return nil
end

-- Feeds bytes; returns the list of events they completed (maybe empty).
function Parser:feed(bytes)
  local events = {}
  if bytes == nil or bytes == "" then return events end
  local text = self.pending .. bytes
  local pos = 1
  if not self.started then
    if #text < 3 and sub("\239\187\191", 1, #text) == text then
      self.pending = text   -- maybe the start of a BOM: wait for more
      return events
    end
    self.started = true
    if sub(text, 1, 3) == "\239\187\191" then pos = 4 end
  end
  if self.skip_lf and byte(text, pos) == LF then pos = pos + 1 end
  self.skip_lf = false
  local n = #text
  while pos <= n do
    local at = find(text, "[\r\n]", pos)
    if not at then break end
    local ev = self:line(sub(text, pos, at - 1))
    if ev then events[#events + 1] = ev end
    if byte(text, at) == CR then
      if at == n then
        self.skip_lf = true     -- its LF may be in the next chunk
        pos = at + 1
        break
      elseif byte(text, at + 1) == LF then
        at = at + 1
      end
    end
    pos = at + 1
  end
  self.pending = sub(text, pos)
  return events
end

-- The stream ended: an event not ended by a blank line is discarded, as
-- EventSource does. Returns nothing.
function Parser:finish()
  self.pending = ""
  self.data, self.has_data, self.event_type, self.own_id = {}, false, "", nil
end

-- Parses a whole stream text at once: events, parser (for comments, retry).
function M.parse(text)
  local p = M.parser()
  local events = p:feed(text)
  p:finish()
  return events, p
end

return M
