package authz

// CacheLen returns the number of validated tokens a remembers.
func (a *JWTAuthorizer) CacheLen() int {
	if a.cache == nil {
		return 0
	}
	return a.cache.Len()
}
