[(line_comment) (block_comment)] @comment
[(string_literal) (character_literal)] @string
[(decimal_integer_literal) (decimal_floating_point_literal) (hex_integer_literal)] @number
[(true) (false) (null_literal)] @constant
[(type_identifier) (integral_type) (floating_point_type) (boolean_type) (void_type)] @type
(method_declaration name: (identifier) @function)
(method_invocation name: (identifier) @function)
["class" "interface" "enum" "extends" "implements" "public" "private" "protected" "static" "final"
 "abstract" "if" "else" "for" "while" "do" "return" "new" "import" "package" "try" "catch" "finally"
 "throw" "throws" "switch" "case" "default" "break" "continue" "instanceof" (this) (super)] @keyword
