-- sluice.text: string helpers for client input, in linear time.
--
-- Lua patterns backtrack. "^%s*(.-)%s*$" on "a" .. 16,000 blanks .. "b"
-- rescans the run of blanks once per character it extends `.-` by: a
-- quadratic second of the event loop per header. These helpers look at each
-- byte a bounded number of times, whatever the input.
--
--   text.trim(s [, i [, j]]) -> s:sub(i, j) without leading and trailing
--                               blanks (%s: space \t \n \v \f \r)
--   text.is_space(byte)      -> true for those six bytes
local byte, sub = string.byte, string.sub

local M = {}

-- %s in the C locale.
local function is_space(c)
  return c == 32 or (c >= 9 and c <= 13)
end
M.is_space = is_space

function M.trim(s, i, j)
  i, j = i or 1, j or #s
  while i <= j and is_space(byte(s, i)) do i = i + 1 end
  while j >= i and is_space(byte(s, j)) do j = j - 1 end
  return sub(s, i, j)
end

return M
