-- wrk script: POST /v1/orders with a unique order_id and user_id per request, so every
-- request is a new order (no replays). SKU comes from the environment (default BENCH).
-- Each wrk thread gets its own prefix; RUN_ID keeps ids unique across runs on one journal.

local sku = os.getenv("SKU") or "BENCH"
-- ADDRESS set: each order carries its own shipping address (what order review's address
-- rule normalises and counts).
local address = os.getenv("ADDRESS")
if address == "" then address = nil end
local run = os.getenv("RUN_ID") or tostring(os.time())
local counter = 0
local prefix = ""
local thread_index = 0

function setup(thread)
  thread:set("thread_index", thread_index)
  thread_index = thread_index + 1
end

function init(args)
  prefix = run .. "-t" .. tostring(thread_index) .. "-"
end

function request()
  counter = counter + 1
  local id = prefix .. counter
  local extra = ""
  if address then
    extra = ',"address":{"line":"' .. id .. ' Bench Road","city":"Benchton"}'
  end
  local body = '{"order_id":"o' .. id .. '","user_id":"u' .. id .. '","sku":"' .. sku .. '","qty":1,"payment":"prepaid"' .. extra .. '}'
  return wrk.format("POST", "/v1/orders", { ["Content-Type"] = "application/json" }, body)
end
