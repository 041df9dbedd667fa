(comment) @comment
[(interpreted_string_literal) (raw_string_literal) (rune_literal)] @string
[(int_literal) (float_literal) (imaginary_literal)] @number
[(true) (false) (nil) (iota)] @constant
(type_identifier) @type
(function_declaration name: (identifier) @function)
(method_declaration name: (field_identifier) @function)
(call_expression function: (identifier) @function)
(call_expression function: (selector_expression field: (field_identifier) @function))
["func" "var" "const" "type" "struct" "interface" "if" "else" "for" "range" "return" "package"
 "import" "go" "defer" "select" "switch" "case" "default" "break" "continue" "map" "chan"
 "fallthrough" "goto"] @keyword
