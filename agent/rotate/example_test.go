package rotate_test

import (
	"fmt"
	"time"

	"writ.dev/writ/agent/rotate"
)

func ExampleRotateAt() {
	notBefore := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	notAfter := notBefore.Add(time.Hour)
	fmt.Println(rotate.RotateAt(notBefore, notAfter, 0).Format(time.Kitchen))
	fmt.Println(rotate.RotateAt(notBefore, notAfter, rotate.MaxJitter(notBefore, notAfter)).Format(time.Kitchen))
	// Output:
	// 12:30PM
	// 12:24PM
}
