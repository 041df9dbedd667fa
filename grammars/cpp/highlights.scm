(comment) @comment
[(string_literal) (raw_string_literal) (char_literal) (system_lib_string)] @string
(number_literal) @number
[(true) (false) (null) "nullptr"] @constant
[(type_identifier) (primitive_type) (sized_type_specifier)] @type
(function_declarator declarator: (identifier) @function)
(function_declarator declarator: (field_identifier) @function)
(call_expression function: (identifier) @function)
["if" "else" "for" "while" "do" "return" "struct" "union" "enum" "typedef" "static" "const"
 "extern" "switch" "case" "default" "break" "continue" "sizeof" "class" "namespace" "template"
 "typename" "public" "private" "protected" "virtual" "override" "new" "delete" "using"
 "constexpr" "try" "catch" "throw" "#include" "#define" (this)] @keyword
