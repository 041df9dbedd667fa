(comment) @comment
[(string_literal) (char_literal) (system_lib_string)] @string
(number_literal) @number
[(true) (false) (null)] @constant
[(type_identifier) (primitive_type) (sized_type_specifier)] @type
(function_declarator declarator: (identifier) @function)
(call_expression function: (identifier) @function)
["if" "else" "for" "while" "do" "return" "struct" "union" "enum" "typedef" "static" "const"
 "extern" "switch" "case" "default" "break" "continue" "sizeof" "goto" "volatile" "inline"
 "#include" "#define" "#if" "#ifdef" "#ifndef" "#endif" "#else"] @keyword
