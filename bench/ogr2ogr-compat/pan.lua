-- A map being panned: each request asks for a box of the same size at a random place within an
-- area SPAN boxes wide and high, so no two requests are the same.
-- Usage: wrk ... -s pan.lua URL -- SOURCE XMIN YMIN WIDTH HEIGHT SPAN
local source, xmin, ymin, width, height, span

function init(args)
  source = args[1]
  xmin, ymin = tonumber(args[2]), tonumber(args[3])
  width, height, span = tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  -- Each wrk thread has its own Lua state; seed each differently.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
end

function request()
  local x = xmin + math.random() * (span - 1) * width
  local y = ymin + math.random() * (span - 1) * height
  local options = string.format("-spat|%.9f|%.9f|%.9f|%.9f", x, y, x + width, y + height)
  return wrk.format("GET", "/ogr2ogr?source=" .. source .. "&options=" .. options:gsub("|", "%%7C"))
end
