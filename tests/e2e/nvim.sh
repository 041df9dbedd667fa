#!/usr/bin/env bash
# neovim's own LSP client against `infill lsp`: open a Python file, ask for completion at a place
# on a line with an emoji and CJK text, accept the item (apply its edit, as a completion plugin
# does), check the buffer; the same through neovim's own completion menu (omnifunc); then turn the
# overlay on and check that neovim holds its hints.
# Usage: tests/e2e/nvim.sh [path/to/infill]   (needs nvim 0.7 or newer)
set -euo pipefail
infill=$(realpath "${1:-target/debug/infill}")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

printf 'def greet(name):\n    print("😀 漢字", nam)\n    return name\n' > "$dir/greet.py"

cat > "$dir/test.lua" <<'EOF'
local function fail(why)
  io.stderr:write("nvim e2e: " .. why .. "\n")
  vim.cmd("cq")
end

local buf = vim.api.nvim_get_current_buf()
-- The README's set-up, in the form neovim 0.7 has (vim.lsp.start and vim.lsp.config came later).
local config = {
  name = "infill",
  cmd = { os.getenv("INFILL"), "lsp" },
  root_dir = vim.fn.getcwd(),
  init_options = { maxTokens = 12, completionWaitMs = 60000 },
}
local id
if vim.lsp.start then
  id = vim.lsp.start(config)
else
  id = vim.lsp.start_client(config)
  vim.lsp.buf_attach_client(buf, id)
end
local ready = vim.wait(60000, function()
  local c = vim.lsp.get_client_by_id(id)
  return c ~= nil and c.server_capabilities ~= nil and c.server_capabilities.completionProvider ~= nil
end, 50)
if not ready then return fail("the server did not initialize") end

-- After `nam` on line 2: byte column 28, UTF-16 character 22.
vim.api.nvim_win_set_cursor(0, { 2, 28 })
local params = vim.lsp.util.make_position_params()
if params.position.character ~= 22 then return fail("position " .. vim.inspect(params.position)) end
local replies = vim.lsp.buf_request_sync(buf, "textDocument/completion", params, 60000)
local reply = replies and replies[id]
if not reply or reply.err then return fail("no completion: " .. vim.inspect(replies)) end
local item = reply.result.items[1]
if not item then return fail("no item: " .. vim.inspect(reply.result)) end
local edit = item.textEdit
if edit.range.start.character ~= 19 or edit.range["end"].character ~= 22 then
  return fail("range " .. vim.inspect(edit.range))
end
if edit.newText:sub(1, 3) ~= "nam" or #edit.newText <= 3 then return fail("newText " .. edit.newText) end

-- Accept it.
vim.lsp.util.apply_text_edits({ edit }, buf, "utf-16")
local want = vim.split('    print("😀 漢字", ' .. edit.newText .. ")", "\n", { plain = true })
local got = vim.api.nvim_buf_get_lines(buf, 1, 1 + #want, false)
if not vim.deep_equal(got, want) then
  return fail("buffer " .. vim.inspect(got) .. " wanted " .. vim.inspect(want))
end

-- The same through the completion menu: the original line back, then <C-x><C-o> with neovim's
-- omnifunc, and <C-y> on the item.
vim.api.nvim_buf_set_lines(buf, 1, 1 + #want, false, { '    print("😀 漢字", nam)' })
vim.bo[buf].omnifunc = "v:lua.vim.lsp.omnifunc"
vim.o.completeopt = "menuone,noinsert"
vim.o.showmode = false
vim.opt.shortmess:append("c")
vim.api.nvim_win_set_cursor(0, { 2, 27 })
local polls, menu = 0, nil
local function poll()
  polls = polls + 1
  if vim.fn.pumvisible() == 1 then
    menu = vim.fn.complete_info({ "items" }).items
    vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<C-y><Esc>", true, false, true), "n", false)
  elseif polls > 1200 then
    vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<Esc>", true, false, true), "n", false)
  else
    vim.defer_fn(poll, 50)
  end
end
vim.defer_fn(poll, 50)
-- Append after `nam` and ask; the timer above ends Insert mode.
vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("a<C-x><C-o>", true, false, true), "x!", false)
if not menu or #menu ~= 1 then return fail("completion menu " .. vim.inspect(menu)) end
got = vim.api.nvim_buf_get_lines(buf, 1, 1 + #want, false)
if edit.newText:find("\n") == nil and not vim.deep_equal(got, want) then
  return fail("after the menu " .. vim.inspect(got) .. " wanted " .. vim.inspect(want))
end

-- The overlay: hints neovim keeps as diagnostics of severity Hint.
vim.lsp.buf_request_sync(buf, "workspace/executeCommand", { command = "infill.overlay", arguments = { true } }, 10000)
local hinted = vim.wait(60000, function() return #vim.diagnostic.get(buf) > 0 end, 50)
if not hinted then return fail("no overlay diagnostics") end
for _, d in ipairs(vim.diagnostic.get(buf)) do
  if d.severity ~= vim.diagnostic.severity.HINT then return fail("severity " .. vim.inspect(d)) end
end

io.stdout:write("nvim e2e: accepted " .. vim.inspect(edit.newText) .. ", "
  .. #vim.diagnostic.get(buf) .. " overlay hints\n")
vim.lsp.stop_client(id)
vim.wait(5000, function() return vim.lsp.get_client_by_id(id) == nil end, 50)
vim.cmd("qa!")
EOF

cd "$dir"
INFILL="$infill" HF_HUB_OFFLINE=1 XDG_STATE_HOME="$dir/state" XDG_CACHE_HOME="$dir/cache" \
    timeout 180 nvim -n --headless --clean -u NONE -c "luafile $dir/test.lua" greet.py
echo "nvim e2e: passed ($(nvim --version | head -1))"
