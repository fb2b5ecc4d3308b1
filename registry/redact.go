package registry

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// redactedError returns err with the password of redisURL hidden. A URL
// that does not parse is named by the reason alone: url.Parse's error
// quotes the whole URL, password included.
func redactedError(err error, redisURL string) error {
	u, perr := url.Parse(redisURL)
	if perr != nil {
		var ue *url.Error
		if errors.As(perr, &ue) {
			return fmt.Errorf("redis url: %v", ue.Err)
		}
		return errors.New("redis url: does not parse")
	}
	if pass, ok := u.User.Password(); ok && pass != "" && strings.Contains(err.Error(), pass) {
		return errors.New(strings.ReplaceAll(err.Error(), pass, "xxxxx"))
	}
	return err
}
