; Highlight captures for the editor (see syntax/highlight.rs for the names it knows).
[(line_comment) (block_comment)] @comment
[(string_literal) (raw_string_literal) (char_literal)] @string
[(integer_literal) (float_literal)] @number
(boolean_literal) @constant
[(type_identifier) (primitive_type)] @type
(function_item name: (identifier) @function)
(call_expression function: (identifier) @function)
(call_expression function: (field_expression field: (field_identifier) @function))
(macro_invocation macro: (identifier) @function)
["fn" "let" "if" "else" "match" "for" "while" "loop" "return" "struct" "enum" "impl" "trait" "pub"
 "use" "mod" "const" "static" "as" "in" "where" "type" "unsafe" "break" "continue" "move" "ref"
 "dyn" "async" "await" (mutable_specifier) (self) (crate) (super)] @keyword
