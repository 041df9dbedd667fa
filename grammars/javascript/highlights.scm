(comment) @comment
[(string) (template_string) (regex)] @string
(number) @number
[(true) (false) (null) (undefined)] @constant
(function_declaration name: (identifier) @function)
(method_definition name: (property_identifier) @function)
(call_expression function: (identifier) @function)
(call_expression function: (member_expression property: (property_identifier) @function))
(class_declaration name: (identifier) @type)
["function" "const" "let" "var" "if" "else" "for" "while" "do" "return" "class" "extends" "new"
 "import" "export" "from" "as" "async" "await" "try" "catch" "finally" "throw" "switch" "case"
 "default" "break" "continue" "of" "in" "typeof" "instanceof" "yield" (this)] @keyword
